"""Start the engine process and the HTTP server; stop both together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from pathlib import Path

from kairos.config import EngineConfig
from kairos.server.config import ServerConfig

logger = logging.getLogger("kairos.server")
RESTART_WINDOW_S = 600.0


def served_name(model: str, path: Path) -> str:
    from kairos.loader.default import DEFAULT_NAME

    return DEFAULT_NAME if model == "default" else path.name.removesuffix(".gguf")


async def serve(engine_cfg: EngineConfig, cfg: ServerConfig) -> int:
    """Run until SIGINT/SIGTERM (exit 0) or until the engine dies (exit 1)."""
    from kairos.loader.default import resolve_model_path
    from kairos.server.client import EngineClient

    path = resolve_model_path(engine_cfg.model.model)  # a bad path fails here, before any process starts
    client = EngineClient(engine_cfg)
    # Start the engine process first (torch import and weights are the long pole of a cold start);
    # this process imports the web stack and loads the tokenizer meanwhile.
    starting = asyncio.create_task(client.start())
    await asyncio.sleep(0)
    try:
        import uvicorn

        from kairos.heap import freeze_startup_heap
        from kairos.loader.tokenizer import load_tokenizer
        from kairos.server.app import build_app
        from kairos.server.http import ConnectionLimits, protocol

        tokenizer = await asyncio.to_thread(load_tokenizer, path)
        ready = await starting
    except BaseException:
        starting.cancel()
        await client.shutdown()
        raise
    name = cfg.served_model_name or served_name(engine_cfg.model.model, path)
    app = build_app(client, tokenizer, name, cfg)
    freeze_startup_heap()
    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            # uvicorn re-raises the signal after its shutdown, which would kill us before the
            # engine is stopped; our handlers below just ask it to exit, and we exit 0.
            yield

    limits = ConnectionLimits(cfg.max_header_bytes, cfg.header_timeout, cfg.body_timeout)
    server = Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning", timeout_graceful_shutdown=5,
                                   http=protocol(limits), h11_max_incomplete_event_size=cfg.max_header_bytes,
                                   limit_concurrency=cfg.max_connections))
    loop = asyncio.get_running_loop()
    draining: list[asyncio.Task] = []

    def drain(grace: float) -> None:
        if not draining:  # (a second signal or call: the first drain goes on)
            draining.append(asyncio.create_task(_drain(app.state.kairos, grace, server)))

    app.state.drain = drain
    loop.add_signal_handler(signal.SIGINT, lambda: setattr(server, "should_exit", True))
    loop.add_signal_handler(signal.SIGTERM, lambda: drain(cfg.drain_grace))

    async def watch() -> None:
        while not server.started:
            await asyncio.sleep(0.05)
        logger.info("serving %s (max_model_len %d) on http://%s:%d%s", name, ready.max_model_len, cfg.host, cfg.port,
                    "; /v1 routes need the API key" if cfg.api_key else "")
        restarts: list[float] = []
        while True:
            while not client.dead:
                await asyncio.sleep(0.2)
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < RESTART_WINDOW_S]
            if len(restarts) >= cfg.engine_restarts:
                break
            restarts.append(now)
            logger.error("engine gone (%s): starting it anew (%d of %d in %.0f s)", client.dead, len(restarts),
                         cfg.engine_restarts, RESTART_WINDOW_S)
            try:
                await client.restart()
            except Exception as e:  # (it failed to start: counted, and tried again while restarts are left)
                logger.error("engine restart failed: %s", e)
                client.dead = client.dead or str(e)
                await asyncio.sleep(1.0)
            else:
                logger.info("engine ready again (pid %d)", client.proc.pid)
        server.should_exit = True  # engine gone for good: requests already get 503; stop instead of hanging

    watcher = asyncio.create_task(watch())
    try:
        await server.serve()
    finally:
        watcher.cancel()
        await client.shutdown()
    if client.dead:
        logger.error("exiting: %s", client.dead)
        return 1
    return 0


async def _drain(s, grace: float, server) -> None:
    """No new request is admitted (503 draining, /health 503: a router takes this replica out);
    those in flight have ``grace`` seconds to finish; the rest end with an error; then the
    server exits."""
    from kairos.server.client import EngineDeadError

    s.checks.draining = True
    logger.info("draining: %d requests in flight, %.0f s to finish", len(s.client.queues), grace)
    deadline = time.monotonic() + grace
    while s.client.queues and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for rid, q in list(s.client.queues.items()):
        q.put_nowait(EngineDeadError(f"server drained: its {grace:g} s of grace ran out"))
        s.client.abort(rid)
    if s.client.queues or grace:
        await asyncio.sleep(0.2)  # (the ended streams' last bytes out)
    server.should_exit = True
