"""Typed messages between the API server and the engine process (msgspec, tagged unions)."""

from __future__ import annotations

import msgspec

from kairos.wire.outputs import EngineRequest, SeqOutput


class AddRequest(msgspec.Struct, tag=True):
    request: EngineRequest


class AbortRequest(msgspec.Struct, tag=True):
    request_id: str


class FinishSequence(msgspec.Struct, tag=True):
    """A stop string was found by the API process's detokenizer: end this sequence."""

    request_id: str
    index: int


class Shutdown(msgspec.Struct, tag=True):
    pass


EngineInput = AddRequest | AbortRequest | FinishSequence | Shutdown


class EngineReady(msgspec.Struct, tag=True):
    model_path: str
    max_model_len: int
    vocab_size: int
    stats: dict[str, float]


class StepOutputs(msgspec.Struct, tag=True):
    outputs: list[SeqOutput]
    stats: dict[str, float] | None = None  # None: unchanged since the last message that had them
    # the prefix cache's block hashes (``kairos.wire.blockhash``) added (+h) and evicted (-h) since
    # the last message with stats, in order; ``cache_snapshot``: they are instead all it holds
    cache_events: list[int] | None = None
    cache_snapshot: bool = False


class RequestRejected(msgspec.Struct, tag=True):
    request_id: str
    message: str
    code: str | None = None  # "slo_infeasible" -> 429


class Admitted(msgspec.Struct, tag=True):
    """Sent for every request the engine took (the API answers only then, so a refusal is a
    4xx before any stream starts), with what SLO admission control predicted (ms; None without
    an SLO, or when admitted best-effort)."""

    request_id: str
    predicted_ttft_ms: float | None = None
    predicted_tpot_ms: float | None = None
    predicted_e2e_ms: float | None = None


class EngineFailed(msgspec.Struct, tag=True):
    message: str


class Heartbeat(msgspec.Struct, tag=True):
    """The engine process is alive (sent each second from a thread of its own), and how long its
    loop has been inside the step it is running (0: between steps)."""

    step_s: float = 0.0


EngineOutput = EngineReady | StepOutputs | RequestRejected | Admitted | EngineFailed | Heartbeat
