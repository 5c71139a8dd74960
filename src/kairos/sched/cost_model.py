"""An online cost model of this engine on this hardware, fitted from its own step timings.

step seconds ~= w0 + w1 * prefill_tokens/100 + w2 * decode_seqs/10 + w3 * decode_context_tokens/1000
                + w4 * [the step has prefill tokens]

The last term is what a step pays for carrying any prefill: on CPU a decode-only step runs the
whole stack in one C call while a mixed step goes layer by layer (on GPU: a captured graph vs
eager); without it the fitted intercept mixes both kinds and mispredicts each.

Fitted by ridge regression toward the current weights over a window of recent steps, with a
trimming pass that drops outliers (GC pauses, a noisy neighbour) so one bad step cannot
swing the predictions. Weights never go negative.
"""

from __future__ import annotations

import itertools
import math
from collections import deque

import torch

_SCALE = (1.0, 100.0, 10.0, 1000.0, 1.0)
MIN_SAMPLES_OF_A_KIND = 4


class CostModel:
    def __init__(self, weights: tuple[float, ...] = (0.02, 0.05, 0.01, 0.01, 0.0),
                 window: int = 512, refit_every: int = 16, frozen: bool = False):
        if len(weights) not in (4, 5):
            raise ValueError(f"a cost model has 4 or 5 weights, got {len(weights)}")
        self.weights = torch.tensor(tuple(weights) + (0.0,) * (5 - len(weights)), dtype=torch.float64)
        self.samples: deque[tuple[tuple[float, ...], float]] = deque(maxlen=window)
        self.refit_every = refit_every
        self.frozen = frozen  # tests and simulations: a fixed, known model
        self._since_fit = 0
        self.fits = 0  # fits from samples so far (0: still the weights it was built with)
        self._informed = False  # a fit has seen enough steps with and without prompt chunks

    @property
    def weights(self) -> torch.Tensor:
        """A copy (set them whole: the floats beside them follow only a set)."""
        return self._weights.clone()

    @weights.setter
    def weights(self, w: torch.Tensor) -> None:
        # (a float copy too: the schedulers' policies ask for step times many times a step, and a
        # tensor's tolist() per ask was most of their cost)
        self._weights, self._w = w, w.tolist()
        self.version = getattr(self, "version", -1) + 1  # (what was computed from the old ones is stale)

    def per_context_token(self) -> float:
        """Seconds a decode step takes per token of its rows' context."""
        return self._w[3] / _SCALE[3]

    @staticmethod
    def features(prefill_tokens: float, decode_seqs: float, decode_ctx: float) -> tuple[float, ...]:
        return (1.0, prefill_tokens / _SCALE[1], decode_seqs / _SCALE[2], decode_ctx / _SCALE[3],
                1.0 if prefill_tokens > 0 else 0.0)

    def step_time(self, prefill_tokens: float, decode_seqs: float, decode_ctx: float) -> float:
        w = self._w  # (the dot product of ``features`` and the weights, written out: a hot path)
        return (w[0] + w[1] * (prefill_tokens / _SCALE[1]) + w[2] * (decode_seqs / _SCALE[2])
                + w[3] * (decode_ctx / _SCALE[3]) + (w[4] if prefill_tokens > 0 else 0.0))

    def prefill_time(self, tokens: int, budget: int, decode_seqs: int, decode_ctx: int) -> float:
        """Seconds to push ``tokens`` of prompt through steps of at most ``budget`` prefill tokens,
        next to ``decode_seqs`` running decodes."""
        if tokens <= 0:
            return 0.0
        full, rest = divmod(tokens, max(1, budget))
        t = full * self.step_time(budget, decode_seqs, decode_ctx)
        return t + (self.step_time(rest, decode_seqs, decode_ctx) if rest else 0.0)

    def max_prefill_tokens(self, seconds: float, decode_seqs: int, decode_ctx: int) -> int:
        """Most prefill tokens a step can carry next to these decodes and still take ``seconds``."""
        per_token = self._w[1] / _SCALE[1]
        spare = seconds - self.step_time(0, decode_seqs, decode_ctx) - self._w[4]
        if spare <= 0:
            return 0
        if per_token <= 0:
            return 1 << 30
        return max(0, int(spare / per_token))

    def worthwhile_chunk(self) -> int:
        """Fewest prompt tokens worth a step with prefill: their time is twice what carrying any
        prefill costs the step (``w4``: on a CPU the step runs layer by layer instead of in one
        C call, on a GPU eagerly instead of from a graph). 0 when that cost is none."""
        per_token = self._w[1] / _SCALE[1]
        return math.ceil(min(2 * self._w[4] / per_token, 1 << 30)) if per_token > 0 else 0

    def max_decode_seqs(self, seconds: float, ctx_per_seq: float) -> int:
        """Most decoding sequences (of ``ctx_per_seq`` context tokens each) whose step takes at most
        ``seconds``; at least 1 (a lone request is served even if it cannot make it)."""
        w = self._w
        per_seq = w[2] / _SCALE[2] + w[3] * ctx_per_seq / _SCALE[3]
        spare = seconds - w[0]
        if per_seq <= 0:
            return 1 << 30
        return max(1, int(spare / per_seq))

    def observe(self, prefill_tokens: int, decode_seqs: int, decode_ctx: int, seconds: float) -> None:
        if self.frozen or not math.isfinite(seconds) or seconds <= 0:
            return
        self.samples.append((self.features(prefill_tokens, decode_seqs, decode_ctx), seconds))
        self._since_fit += 1
        # refit after half as many new steps as it has, up to ``refit_every``: a fresh engine
        # leaves its defaults at its 8th step, not its 16th (fits at 8, 16, 32, 48, ... steps);
        # meanwhile admission predicts from the defaults
        if self._since_fit >= min(self.refit_every, max(4, len(self.samples) // 2)):
            self.fit()

    def fit(self, ridge: float = 1.0) -> None:
        self._since_fit = 0
        if len(self.samples) < 8:
            return
        x = torch.tensor([s[0] for s in self.samples], dtype=torch.float64)
        y = torch.tensor([s[1] for s in self.samples], dtype=torch.float64)
        w = self._solve(x, y, ridge)
        resid = (x @ w - y).abs()
        mad = resid.median() * 1.4826 + 1e-9
        keep = resid <= 3 * mad + 0.05 * y  # trim outliers, never below 5% of the step itself
        if keep.sum() >= 8 and not bool(keep.all()):
            w = self._solve(x[keep], y[keep], ridge)
        self.weights = w.clamp(min=0.0)
        self.fits += 1
        with_prefill = int(x[:, 4].sum().item())
        self._informed |= min(with_prefill, len(self.samples) - with_prefill) >= MIN_SAMPLES_OF_A_KIND

    @property
    def fitted(self) -> bool:
        """Whether the weights describe this engine: fixed by design, or fitted from at least
        ``MIN_SAMPLES_OF_A_KIND`` of its steps with prompt chunks and as many without (fitted
        from decode steps alone, the ridge keeps the prefill weights near their defaults)."""
        return self.frozen or self._informed

    def _solve(self, x: torch.Tensor, y: torch.Tensor, ridge: float) -> torch.Tensor:
        # ridge toward the current weights: steady when a feature never varies (e.g. batch size)
        a = x.T @ x + ridge * torch.eye(x.shape[1], dtype=x.dtype)
        b = x.T @ y + ridge * self.weights
        return torch.linalg.solve(a, b)

    def describe(self) -> dict[str, float]:
        w = self.weights.tolist()
        return {"cost_step_overhead_s": w[0], "cost_prefill_s_per_token": w[1] / _SCALE[1],
                "cost_decode_s_per_seq": w[2] / _SCALE[2], "cost_decode_s_per_ctx_token": w[3] / _SCALE[3],
                "cost_prefill_step_s": w[4],
                "cost_samples": len(self.samples), "cost_fitted": float(self.fitted)}


class Calibration:
    """How far reality ran past the engine's own predictions, learned online: the ``quantile`` of
    the actual/predicted ratios of requests answered lately, each weighing half as much every
    ``half_life`` seconds (nothing past ``horizon``), next to ``prior`` fresh answers on time
    (ratio 1: the cost model taken at its word; by default quantile / (1 - quantile), so one
    slow answer alone never sets the factor, two do). Predictions made at admission are scaled
    by it, so a request is admitted when its objective holds at that confidence against what the
    cost model leaves out (arrivals after it, host noise). Old answers fade even while no new
    ones come: a bad spell that led to refusals (and so to no new answers) cannot keep admission
    shut."""

    def __init__(self, quantile: float, half_life: float = 15.0, prior: float | None = None, horizon: float = 60.0):
        self.quantile = quantile
        self.half_life, self.horizon = half_life, horizon
        self.prior = quantile / (1 - quantile) if prior is None else prior
        self.ratios: deque[tuple[float, float]] = deque(maxlen=256)  # (when, actual / predicted)

    def observe(self, now: float, predicted: float, actual: float) -> None:
        if predicted > 0 and math.isfinite(actual):
            self.ratios.append((now, actual / predicted))

    def factor(self, now: float) -> float:
        while self.ratios and self.ratios[0][0] < now - self.horizon:
            self.ratios.popleft()
        weighted = sorted([(r, 0.5 ** ((now - t) / self.half_life)) for t, r in self.ratios] + [(1.0, self.prior)])
        target = self.quantile * sum(w for _, w in weighted) * (1 - 1e-12)  # (the sum's rounding)
        # the weighted quantile: the first ratio with that share of the weight at or below it
        q = next(r for (r, _), seen in zip(weighted, itertools.accumulate(w for _, w in weighted)) if seen >= target)
        return min(10.0, max(0.5, q))


class StepIntervals:
    """Wall seconds between consecutive step ends while the engine had work (what a running
    request waits per token: the step, the scheduler and the loop around them), over the last
    ``horizon`` seconds, split into what the cost model predicts for the step's decode rows, the
    loop around it (:meth:`overhead`, learned from decode-only steps) and the rest, prompt
    chunks (:meth:`prefill_load`). A token's time is a decode-only step and its overhead,
    stretched by the prompt chunks of other arrivals in between."""

    def __init__(self, horizon: float = 10.0):
        self.horizon = horizon
        # (end, seconds, past the model's decode step: decode-only steps, prefill: the others)
        self.intervals: deque[tuple[float, float, float, bool]] = deque()
        self._sum = self._overhead_sum = self._prefill_sum = 0.0  # running sums over ``intervals``
        self._decode_n = 0

    def observe(self, end: float, seconds: float, decode_s: float, prefill: bool) -> None:
        """A step ended at ``end``, ``seconds`` after the one before; the cost model predicts
        ``decode_s`` for its decode rows alone; ``prefill``: it carried prompt chunks."""
        if math.isfinite(seconds) and seconds > 0 and math.isfinite(decode_s):
            past = seconds - decode_s
            if prefill:  # (the loop's overhead is not prefill: decode-only steps pay it too)
                past = max(0.0, past - self.overhead(end))
            self.intervals.append((end, seconds, past, prefill))
            self._add(self.intervals[-1], 1)
        self._prune(end)

    def mean(self, now: float) -> float:
        """Mean interval of the recent steps; 0 when the engine has not stepped lately."""
        self._prune(now)
        return self._sum / len(self.intervals) if self.intervals else 0.0

    def overhead(self, now: float) -> float:
        """Mean seconds the recent decode-only steps took past the cost model's prediction (the
        loop around a step, what the model misses); at least 0, and 0 when there were none."""
        self._prune(now)
        return max(0.0, self._overhead_sum / self._decode_n) if self._decode_n else 0.0

    def prefill_load(self, now: float) -> float:
        """Share of the last ``horizon`` seconds that steps spent on prompt chunks (0 to 1).
        Over the whole window, idle time included: the rate at which prompt work arrives, so a
        token stretched by it takes a decode step / (1 - load)."""
        self._prune(now)
        return min(1.0, self._prefill_sum / self.horizon)

    def _add(self, entry: tuple[float, float, float, bool], sign: int) -> None:
        _, seconds, past, prefill = entry
        self._sum += sign * seconds
        if prefill:
            self._prefill_sum += sign * past
        else:
            self._overhead_sum += sign * past
            self._decode_n += sign

    def _prune(self, now: float) -> None:
        while self.intervals and self.intervals[0][0] < now - self.horizon:
            self._add(self.intervals.popleft(), -1)
        if not self.intervals:  # no drift from the running sums' roundings
            self._sum = self._overhead_sum = self._prefill_sum = 0.0
            self._decode_n = 0
