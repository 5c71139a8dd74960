"""A replica's cost model as numbers (its ``cost_*`` stats), for whoever predicts its step times
without it: the router. The same formula as ``kairos.sched.cost_model.CostModel.step_time``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepCost:
    overhead_s: float = 0.02
    prefill_s_per_token: float = 0.0005
    decode_s_per_seq: float = 0.001
    decode_s_per_ctx_token: float = 0.00001
    prefill_step_s: float = 0.0

    @classmethod
    def from_stats(cls, stats: dict[str, float]) -> StepCost:
        """From a replica's ``/stats`` (``CostModel.describe``); defaults where a key is missing."""
        d = cls()
        keys = {"overhead_s": "cost_step_overhead_s", "prefill_s_per_token": "cost_prefill_s_per_token",
                "decode_s_per_seq": "cost_decode_s_per_seq", "decode_s_per_ctx_token": "cost_decode_s_per_ctx_token",
                "prefill_step_s": "cost_prefill_step_s"}
        return cls(**{k: float(stats.get(key, getattr(d, k))) for k, key in keys.items()})

    def step_time(self, prefill_tokens: float, decode_seqs: float, decode_ctx: float) -> float:
        return (self.overhead_s + self.prefill_s_per_token * prefill_tokens + self.decode_s_per_seq * decode_seqs
                + self.decode_s_per_ctx_token * decode_ctx + (self.prefill_step_s if prefill_tokens > 0 else 0.0))

    def prefill_time(self, tokens: int, budget: int, decode_seqs: int, decode_ctx: float) -> float:
        """Seconds to push ``tokens`` of prompt through steps of at most ``budget`` prefill tokens."""
        if tokens <= 0:
            return 0.0
        full, rest = divmod(tokens, max(1, budget))
        return full * self.step_time(budget, decode_seqs, decode_ctx) + (
            self.step_time(rest, decode_seqs, decode_ctx) if rest else 0.0)
