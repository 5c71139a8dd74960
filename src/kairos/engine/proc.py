"""The engine process: a synchronous loop around EngineCore, fed and drained over ZMQ.

No asyncio and no locks here: inputs are drained between steps (blocking only while idle),
and each step's outputs go back in one message.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import traceback

import msgspec
import zmq

from kairos.config import EngineConfig
from kairos.wire.messages import (
    AbortRequest,
    AddRequest,
    Admitted,
    EngineFailed,
    EngineInput,
    EngineOutput,
    EngineReady,
    FinishSequence,
    Heartbeat,
    RequestRejected,
    Shutdown,
    StepOutputs,
)

IDLE_POLL_MS = 200  # while idle, wake this often to notice a dead parent
HEARTBEAT_S = 1.0  # the process says it is alive this often (the API's /health), from a thread of its own
STATS_EVERY_S = 0.25

logger = logging.getLogger("kairos.engine")


def _heartbeats(ctx: zmq.Context, output_addr: str, stop: threading.Event, in_step: list[float | None]) -> None:
    """Each second: a heartbeat, with how long the loop has been in its step (``in_step[0]``: when
    the step began, None between steps)."""
    sock = ctx.socket(zmq.PUSH)  # (its own socket: a ZMQ socket is not shared between threads)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(output_addr)
    enc = msgspec.msgpack.Encoder()
    try:
        while not stop.wait(HEARTBEAT_S):
            began = in_step[0]
            sock.send(enc.encode(Heartbeat(0.0 if began is None else time.monotonic() - began)))
    finally:
        sock.close(0)  # (before the context ends: it waits for every socket)


def run_engine(config: EngineConfig, input_addr: str, output_addr: str, log_level: int = logging.INFO) -> None:
    """Process entry point (spawned by EngineClient)."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the API process decides when we stop
    parent = os.getppid()
    ctx = zmq.Context()
    inp = ctx.socket(zmq.PULL)
    inp.connect(input_addr)
    out = ctx.socket(zmq.PUSH)
    out.setsockopt(zmq.LINGER, 2000)
    out.connect(output_addr)
    enc = msgspec.msgpack.Encoder()
    dec = msgspec.msgpack.Decoder(EngineInput)

    stop = threading.Event()
    in_step: list[float | None] = [None]  # when the step the loop runs began (read by the heartbeats)
    beating = threading.Thread(target=_heartbeats, args=(ctx, output_addr, stop, in_step), name="kairos-heartbeat",
                               daemon=True)

    def send(msg: EngineOutput) -> None:
        out.send(enc.encode(msg))

    try:
        from kairos.engine.core import EngineCore
        from kairos.heap import freeze_startup_heap

        engine = EngineCore(config)
        freeze_startup_heap()
        send(EngineReady(str(engine.model_path), engine.max_model_len, engine.arch.vocab_size, engine.stats()))
        engine.kv.cache_events()  # (starts its journal: the cache is empty, nothing to say yet)
        # (a thread: a long step, a prefill of thousands of tokens on a CPU, is not a stall; a
        # process stopped or gone sends nothing)
        beating.start()
        last_stats = 0.0
        poller = zmq.Poller()
        poller.register(inp, zmq.POLLIN)
        flight = None  # async scheduling: the step queued on the device while the last one's outputs go out
        # requests waiting for their grammar: their verdict waits too (a grammar that fails for the
        # tokenizer is a refusal, a 4xx, not a stream that ends in an error)
        unjudged: dict[str, Admitted] = {}  # request id -> its verdict if the grammar compiles (its promise made at arrival)
        refused: set[str] = set()  # (their "error" outputs are dropped: the refusal said it)

        def admitted(rid: str, slo) -> Admitted:
            promised = engine.admission(rid) if slo is not None else None
            return Admitted(rid, *(() if promised is None else (x * 1000 for x in promised)))

        while True:
            timeout = 0 if engine.has_unfinished() or flight is not None else IDLE_POLL_MS
            if flight is None and engine.only_compiling():
                timeout = 1  # (ms: nothing to step until a grammar is compiled)
            aborted = []
            while poller.poll(timeout):
                timeout = 0
                msg = dec.decode(inp.recv())
                if isinstance(msg, AddRequest):
                    try:
                        engine.add_request(msg.request)
                    except ValueError as e:
                        send(RequestRejected(msg.request.request_id, str(e), getattr(e, "code", None)))
                    else:  # every request gets a verdict: a refused stream is a 4xx, not a 200 with an error in it
                        rid = msg.request.request_id
                        if engine.is_waiting_for_grammar(rid):
                            unjudged[rid] = admitted(rid, msg.request.slo)
                            send(StepOutputs([], engine.stats()))  # (num_compiling)
                        else:
                            send(admitted(rid, msg.request.slo))
                elif isinstance(msg, AbortRequest):
                    unjudged.pop(msg.request_id, None)
                    aborted.extend(engine.abort(msg.request_id))
                elif isinstance(msg, FinishSequence):
                    engine.finish_sequence(msg.request_id, msg.index)
                elif isinstance(msg, Shutdown):
                    return
            if os.getppid() != parent:  # the API process died: do not linger as an orphan
                logger.error("API process is gone; engine exiting")
                return
            in_step[0] = time.monotonic()
            if flight is None and engine.has_unfinished():
                flight = engine.launch()
            outputs = []
            if flight is not None:
                outputs, flight = engine.advance(flight)
            in_step[0] = None
            for rid, error in engine.take_verdicts():  # (before the outputs: a first token follows its Admitted)
                if rid in unjudged:
                    verdict = unjudged.pop(rid)
                    if error is None:
                        send(verdict)
                    else:
                        refused.add(rid)
                        send(RequestRejected(rid, error))
            if refused:
                said = {o.request_id for o in outputs if o.request_id in refused and o.finish_reason == "error"}
                outputs = [o for o in outputs if o.request_id not in said]
                refused -= said  # (nothing more comes for them)
            if outputs or aborted:
                # stats are gauges: refresh them a few times a second, and whenever the engine goes idle
                now = time.monotonic()
                fresh = not engine.has_unfinished() or now - last_stats >= STATS_EVERY_S
                if fresh:
                    last_stats = now
                if fresh:
                    events, snapshot = engine.kv.cache_events()
                    send(StepOutputs(aborted + outputs, engine.stats(), events, snapshot))
                else:
                    send(StepOutputs(aborted + outputs))
    except Exception as e:  # report, then exit non-zero: the API process turns this into 503s
        send(EngineFailed(f"{type(e).__name__}: {e}"))
        traceback.print_exc()
        os._exit(1)
    finally:
        stop.set()
        if beating.is_alive():
            beating.join(2)
        inp.close(0)
        out.close()
        ctx.term()
