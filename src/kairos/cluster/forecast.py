"""What a replica would give a request: its first token, time per token and last token, from the
state it pushes (cost model, queue, batch) and the router's own view of what it sent since.

The engine's admission predicts from its whole queue in its policy's order; the router sees only
totals: the prompt tokens queued there are computed before this one's (for a request with a
first-token objective, those of the others that have one). The replica's own admission is the final judge (a refusal
there sends the request to the next best replica once)."""

from __future__ import annotations

from kairos.cluster.policies import Forecast
from kairos.wire.costs import StepCost

DEFAULT_MAX_NUM_SEQS, DEFAULT_BUDGET = 64, 512  # (the engine's CPU defaults, for a replica that says none)


def forecast(stats: dict[str, float], prompt_tokens: int, cached_tokens: int, max_tokens: int,
             in_flight: int = 0, pending_prefill: int = 0, first_token_due: bool = False) -> Forecast:
    """``stats``: the replica's last pushed ``/stats``; ``in_flight`` and ``pending_prefill``: the
    requests the router has there and the uncached prompt tokens of those not yet started, which
    its stats may not show yet (of those, for ``first_token_due``, the ones with a TTFT objective).
    ``first_token_due``: the request has a TTFT objective, and waits only for the prompts of
    others that have one (the engine's slack and edf policies serve those first, batch work after)."""
    cost = StepCost.from_stats(stats)
    overhead = float(stats.get("step_overhead_s", 0.0))  # (the loop around a step: what the model misses)
    cap = int(stats.get("max_num_seqs") or DEFAULT_MAX_NUM_SEQS)
    budget = int(stats.get("max_num_batched_tokens") or DEFAULT_BUDGET)
    active = max(int(stats.get("num_running", 0) + stats.get("num_waiting", 0)), in_flight)
    batch = min(cap, active + 1)
    ctx = float(stats.get("decode_context_tokens", 0)) + prompt_tokens
    key = "queued_prefill_tokens_ttft" if first_token_due and "queued_prefill_tokens_ttft" in stats else "queued_prefill_tokens"
    queued = max(int(stats.get(key, 0)), pending_prefill) + max(0, prompt_tokens - cached_tokens)
    chunk = max(1, budget - (batch - 1))  # (decodes go first in a step; chunks fill the rest)
    steps = -(-queued // chunk)
    first = cost.prefill_time(queued, chunk, batch - 1, ctx) + steps * overhead
    # a token: a decode step of the batch it joins, stretched by the prompt work arriving meanwhile
    load = min(0.8, float(stats.get("step_prefill_load", 0.0)))
    tpot = (cost.step_time(0, batch, ctx) + overhead) / (1 - load)
    last = first + max(0, max_tokens - 1) * tpot
    first *= float(stats.get("slo_ttft_calibration", 1.0))
    last *= float(stats.get("slo_e2e_calibration", 1.0))
    return Forecast(first, tpot, max(first, last))


IDLE = {"num_running": 0, "num_waiting": 0, "queued_prefill_tokens": 0, "queued_prefill_tokens_ttft": 0,
        "decode_context_tokens": 0, "step_prefill_load": 0.0}


def idle_forecast(stats: dict[str, float], prompt_tokens: int, cached_tokens: int, max_tokens: int) -> Forecast:
    """What the replica would give the request with nothing else to do: the best it can ever do."""
    return forecast({**stats, **IDLE}, prompt_tokens, cached_tokens, max_tokens)
