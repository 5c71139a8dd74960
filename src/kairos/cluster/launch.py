"""Run a router: in front of given upstreams (``kairos router``), or of local replicas it starts
(``kairos serve --replicas N``); SIGINT/SIGTERM stop it and every replica it started."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from kairos.cluster.config import RouterConfig
from kairos.cluster.local import LocalFleet
from kairos.server.config import ServerConfig

logger = logging.getLogger("kairos.cluster")


def reader_for(model: str | None, chat_template: str | None):
    from kairos.cluster.prompts import PromptReader
    from kairos.server.chat_template import load_template

    if model is None:
        return PromptReader()
    from kairos.loader.default import resolve_model_path
    from kairos.loader.tokenizer import load_tokenizer

    return PromptReader(load_tokenizer(resolve_model_path(model)), load_template(chat_template))


async def run_router(cfg: RouterConfig, http: ServerConfig, fleet: LocalFleet | None = None) -> int:
    import uvicorn

    from kairos.cluster.app import build_router_app
    from kairos.cluster.replica import APPROX_BLOCK, Replica
    from kairos.cluster.router import Router
    from kairos.server.http import ConnectionLimits, protocol

    logging.getLogger("httpx").setLevel(logging.WARNING)  # (a line per relayed request otherwise)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reader = await asyncio.to_thread(reader_for, cfg.tokenizer, http.chat_template)
    starting = asyncio.create_task(fleet.start()) if fleet is not None else None
    router = None
    try:
        if starting is not None:
            await _until(starting, stop)
            if stop.is_set():
                return 0
        urls = list(cfg.upstream) + (fleet.urls if fleet is not None else [])
        router = Router(cfg, [Replica(i, u, cfg.approx_cache_tokens // APPROX_BLOCK) for i, u in enumerate(urls)], reader,
                        http.api_key)
        await router.start()
        app = build_router_app(router, http)

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self):  # (ours above: stop in order, exit 0)
                yield

        limits = ConnectionLimits(http.max_header_bytes, http.header_timeout, http.body_timeout)
        server = Server(uvicorn.Config(app, host=http.host, port=http.port, log_level="warning",
                                       timeout_graceful_shutdown=5, http=protocol(limits),
                                       h11_max_incomplete_event_size=http.max_header_bytes,
                                       limit_concurrency=http.max_connections))
        serving = asyncio.create_task(server.serve())
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        if server.started:
            logger.info("routing (%s) over %d replicas on http://%s:%d", cfg.routing_policy, len(urls), http.host,
                        http.port)
        await _until(serving, stop)
        if fleet is not None:  # the replicas drain first (no new request, those in flight finish), relayed meanwhile
            await fleet.stop(grace=http.drain_grace + 10)
        server.should_exit = True
        await serving
        return 0
    finally:
        if starting is not None and not starting.done():
            starting.cancel()
        if router is not None:
            await router.stop()
        if fleet is not None:
            await fleet.stop()


async def _until(task: asyncio.Task, stop: asyncio.Event) -> None:
    # wait for ``task`` or ``stop``, whichever comes first (``task`` raises: so does this)
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if task.done():
        task.result()
