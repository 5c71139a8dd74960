"""EngineClient: runs the engine in its own process and routes its outputs to per-request queues."""

from __future__ import annotations

import asyncio
import importlib
import logging
import multiprocessing as mp
import os
import shutil
import tempfile
import time

import msgspec
import zmq
import zmq.asyncio

from kairos.config import EngineConfig
from kairos.wire.messages import (
    AbortRequest,
    AddRequest,
    Admitted,
    EngineFailed,
    EngineOutput,
    EngineReady,
    FinishSequence,
    Heartbeat,
    RequestRejected,
    Shutdown,
    StepOutputs,
)
from kairos.wire.outputs import EngineRequest

logger = logging.getLogger("kairos.server")


class EngineDeadError(RuntimeError):
    pass


class RequestRejectedError(ValueError):
    def __init__(self, message: str, code: str | None):
        super().__init__(message)
        self.code = code


def _engine_main(*args) -> None:
    """The engine process's entry (spawned): the engine is imported there, never in this process."""
    importlib.import_module("kairos.engine.proc").run_engine(*args)


class EngineClient:
    """Async front of the engine process. ``add`` returns a queue of ``SeqOutput`` (or an exception)."""

    def __init__(self, config: EngineConfig):
        self.config = config
        self.ready: EngineReady | None = None
        self.stats: dict[str, float] = {}
        self.cached_blocks: set[int] = set()  # the engine's prefix cache, as block hashes
        self.watchers: set[asyncio.Queue] = set()  # /stats/stream readers: each gets (events, snapshot)
        self.dead: str | None = None
        self.queues: dict[str, asyncio.Queue] = {}
        self._widths: dict[str, int] = {}  # request id -> its n
        self.sequences = 0  # of the requests in ``queues`` (what --max-pending bounds)
        self._ctx = zmq.asyncio.Context()
        # sockets in a folder of this user's alone (abstract sockets would leave no file, but any
        # local user could connect to them), removed at shutdown
        self._dir = tempfile.mkdtemp(prefix="kairos-")
        if len(self._dir) > 80:  # (a socket's path has ~107 bytes at most: a long $TMPDIR would not fit)
            os.rmdir(self._dir)
            self._dir = tempfile.mkdtemp(prefix="kairos-", dir="/tmp")
        self._generation = 0  # engine processes started (their sockets' names)
        self._open_sockets()
        self._enc = msgspec.msgpack.Encoder()
        self._dec = msgspec.msgpack.Decoder(EngineOutput)
        self.proc: mp.Process | None = None
        self._tasks: list[asyncio.Task] = []
        self.last_heard = time.monotonic()  # when the engine last sent anything (a heartbeat at least each second)
        self._step_began: float | None = None  # when the step its loop is in began, as its last heartbeat said

    def _open_sockets(self) -> None:
        # new names for each engine process: nothing queued for a dead one reaches the next
        base = os.path.join(self._dir, f"engine{self._generation}")
        self._in_addr, self._out_addr = f"ipc://{base}-in", f"ipc://{base}-out"
        self._in = self._ctx.socket(zmq.PUSH)
        self._in.bind(self._in_addr)
        self._out = self._ctx.socket(zmq.PULL)
        self._out.bind(self._out_addr)

    async def restart(self, timeout: float = 600.0) -> EngineReady:
        """Start a new engine process after the last one died (every request it had got its
        ``EngineDeadError``); ``dead`` stays set, and new requests get 503, until it is ready."""
        for t in self._tasks:
            t.cancel()
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()
            await asyncio.to_thread(self.proc.join, 5)
        self._in.close(0)
        self._out.close(0)
        self._generation += 1
        self._open_sockets()
        ready = await self.start(timeout)
        self.cached_blocks = set()  # (a new engine: an empty prefix cache; readers of the stream reconnect)
        self.dead = None
        return ready

    async def start(self, timeout: float = 600.0) -> EngineReady:
        self.proc = mp.get_context("spawn").Process(
            target=_engine_main, args=(self.config, self._in_addr, self._out_addr, logging.getLogger().level or logging.INFO),
            name="kairos-engine", daemon=True)
        self.proc.start()
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if await self._out.poll(200):
                msg = self._dec.decode(await self._out.recv())
                if isinstance(msg, EngineReady):
                    break
                if isinstance(msg, EngineFailed):
                    raise EngineDeadError(f"engine failed to start: {msg.message}")
            if not self.proc.is_alive():
                raise EngineDeadError(f"engine process exited with code {self.proc.exitcode} while starting")
            if asyncio.get_running_loop().time() > deadline:
                raise EngineDeadError("engine did not become ready in time")
        self.ready, self.stats = msg, msg.stats
        self.last_heard = time.monotonic()
        self._tasks = [asyncio.create_task(self._read_outputs()), asyncio.create_task(self._watch_process())]
        return msg

    def silent_for(self) -> float:
        """Seconds since the engine process last sent anything (a heartbeat each second, from a
        thread of its own): past a few, the process is stopped, swapped out or gone (a loop stuck
        in a step: :meth:`in_step_for`)."""
        return time.monotonic() - self.last_heard

    def in_step_for(self) -> float:
        """Seconds the engine's loop has been inside one step (0: between steps, as far as heard)."""
        return 0.0 if self._step_began is None else time.monotonic() - self._step_began

    def add(self, request: EngineRequest) -> asyncio.Queue:
        if self.dead:
            raise EngineDeadError(self.dead)
        q: asyncio.Queue = asyncio.Queue()
        self.queues[request.request_id] = q
        self._widths[request.request_id] = request.params.n
        self.sequences += request.params.n
        try:
            self._send(AddRequest(request))
        except BaseException:
            self._forget(request.request_id)  # (a slot held for ever would count against max_pending)
            raise
        return q

    def abort(self, request_id: str) -> None:
        if self._forget(request_id) is not None and not self.dead:
            self._send(AbortRequest(request_id))

    def finish_sequence(self, request_id: str, index: int) -> None:
        if not self.dead:
            self._send(FinishSequence(request_id, index))

    def release(self, request_id: str) -> None:
        """Forget a request that has finished (nothing is sent to the engine)."""
        self._forget(request_id)

    def _forget(self, request_id: str) -> asyncio.Queue | None:
        self.sequences -= self._widths.pop(request_id, 0)
        return self.queues.pop(request_id, None)

    def _send(self, msg) -> None:
        self._in.send(self._enc.encode(msg), copy=False)  # PUSH to one local peer: never blocks in practice

    async def _read_outputs(self) -> None:
        while True:
            msg = self._dec.decode(await self._out.recv())
            self.last_heard = time.monotonic()
            self._step_began = (self.last_heard - msg.step_s if isinstance(msg, Heartbeat) and msg.step_s
                                else None)  # (any other word: the loop got past a step)
            if isinstance(msg, StepOutputs):
                if msg.stats is not None:
                    self.stats = msg.stats
                    self._cache_changed(msg.cache_events or [], msg.cache_snapshot)
                for o in msg.outputs:
                    q = self.queues.get(o.request_id)
                    if q is not None:
                        q.put_nowait(o)
            elif isinstance(msg, RequestRejected):
                q = self._forget(msg.request_id)
                if q is not None:
                    q.put_nowait(RequestRejectedError(msg.message, msg.code))
            elif isinstance(msg, Admitted):
                q = self.queues.get(msg.request_id)
                if q is not None:
                    q.put_nowait(msg)
            elif isinstance(msg, EngineFailed):
                self._fail(f"engine failed: {msg.message}")
                return

    def _cache_changed(self, events: list[int], snapshot: bool) -> None:
        if snapshot:
            self.cached_blocks = set(events)
        else:
            for h in events:
                if h > 0:
                    self.cached_blocks.add(h)
                else:
                    self.cached_blocks.discard(-h)
        if events or snapshot:
            for q in self.watchers:
                if q.qsize() > 256:  # a reader that fell behind: its backlog becomes one snapshot
                    while not q.empty():
                        q.get_nowait()
                    q.put_nowait(([], True))
                else:
                    q.put_nowait((events, snapshot))

    async def _watch_process(self) -> None:
        while self.proc is not None and self.proc.is_alive():
            await asyncio.sleep(0.5)
        self._fail(f"engine process exited with code {self.proc.exitcode if self.proc else None}")

    def _fail(self, why: str) -> None:
        if self.dead:
            return
        self.dead = why
        logger.error("%s", why)
        for q in self.queues.values():
            q.put_nowait(EngineDeadError(why))
        self.queues.clear()
        self._widths.clear()
        self.sequences = 0

    async def shutdown(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self.proc is not None and self.proc.is_alive():
            self._send(Shutdown())
            await asyncio.to_thread(self.proc.join, 10)
            if self.proc.is_alive():
                self.proc.kill()
                await asyncio.to_thread(self.proc.join, 5)
        self._in.close(0)
        self._out.close(0)
        self._ctx.term()
        shutil.rmtree(self._dir, ignore_errors=True)
