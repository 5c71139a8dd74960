"""Workloads: what to send (prompt lengths, shared prefixes, SLO classes) and when (arrivals)."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class SLO:
    """Client-side objectives; any may be None. Sent to Kairos as the `slo` body field and headers."""

    name: str = "default"
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    deadline_ms: float | None = None
    # sent as the body's ``priority`` field, as is: vLLM serves lower values first, Kairos higher
    priority: int | None = None

    def met(self, ttft_s: float | None, tpot_s: float | None, e2e_s: float) -> bool:
        if self.ttft_ms is not None and (ttft_s is None or ttft_s * 1000 > self.ttft_ms):
            return False
        if self.tpot_ms is not None and tpot_s is not None and tpot_s * 1000 > self.tpot_ms:
            return False
        return not (self.deadline_ms is not None and e2e_s * 1000 > self.deadline_ms)

    @classmethod
    def parse(cls, text: str) -> SLO:
        """``name:ttft_ms=1000,tpot_ms=150``, ``batch:deadline_ms=60000``, ``ttft_ms=500`` (the
        class named "default"), or ``batch`` (a class without objectives); ``priority=N`` adds the
        body field ``priority`` to the class's requests."""
        name, colon, rest = text.partition(":")
        if "=" in name:  # (no name: every field is in ``text``)
            name, rest = "default", text
        kw = {}
        for part in filter(None, rest.split(",")):
            k, _, v = part.partition("=")
            if k == "priority":
                try:
                    kw[k] = int(v)
                except ValueError:
                    raise ValueError(f"SLO field priority must be an integer, got {v!r} in {text!r}") from None
                continue
            if k not in ("ttft_ms", "tpot_ms", "deadline_ms"):
                raise ValueError(f"unknown SLO field {k!r} in {text!r} (ttft_ms, tpot_ms, deadline_ms, priority)")
            try:
                kw[k] = float(v)
            except ValueError:
                raise ValueError(f"SLO field {k} must be a number of ms, got {v!r} in {text!r}") from None
            if not kw[k] > 0:
                raise ValueError(f"SLO field {k} must be > 0, got {v!r} in {text!r}")
        return cls(name=name or "default", **kw)


@dataclass(frozen=True)
class Length:
    """A length distribution: fixed, uniform (lo..hi) or normal (mean, std), clipped to >= 1."""

    kind: str = "fixed"
    a: float = 128
    b: float = 0

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return max(1, int(self.a))
        if self.kind == "uniform":
            return max(1, rng.randint(int(self.a), int(self.b)))
        if self.kind == "normal":
            return max(1, round(rng.gauss(self.a, self.b)))
        raise ValueError(f"unknown length distribution {self.kind!r}")

    @classmethod
    def parse(cls, text: str) -> Length:
        """``128`` | ``uniform:64:256`` | ``normal:128:32``."""
        parts = text.split(":")
        try:
            nums = [float(x) for x in parts[1:]] if parts[0] in ("uniform", "normal") else [float(parts[0])]
        except ValueError:
            nums = []
        nums = nums if all(map(math.isfinite, nums)) else []
        if len(parts) == 1 and nums:
            return cls("fixed", nums[0])
        if len(nums) == 2 and nums[1] >= (nums[0] if parts[0] == "uniform" else 0):  # (LO <= HI, STD >= 0)
            return cls(parts[0], *nums)
        raise ValueError(f"bad length {text!r}: use N, uniform:LO:HI (LO <= HI) or normal:MEAN:STD (STD >= 0)")


@dataclass
class RequestSpec:
    index: int
    send_at: float  # seconds after the start
    prompt: str
    prompt_tokens: int  # as built (the server's usage is preferred when it reports one)
    max_tokens: int
    slo: SLO
    session: int | None = None  # multi-turn: requests of one session share history
    extra: dict = field(default_factory=dict)


def arrival_times(n: int, rate: float, kind: str, rng: random.Random, burstiness: float = 1.0) -> list[float]:
    """Open-loop send times: rate in requests/s (inf: all at once)."""
    if rate == float("inf"):
        return [0.0] * n
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        if kind == "constant":
            t += 1.0 / rate
        elif kind == "poisson":
            t += rng.expovariate(rate)
        elif kind == "gamma":  # shape = burstiness (<1 burstier), mean 1/rate
            t += rng.gammavariate(burstiness, 1.0 / (rate * burstiness))
        else:
            raise ValueError(f"unknown arrival process {kind!r} (poisson, gamma, constant)")
    return out


class PromptMaker:
    """Random text of an exact token count under a tokenizer (decode random ids, re-encode, trim)."""

    def __init__(self, tokenizer, rng: random.Random):
        self.tok = tokenizer
        self.rng = rng
        special = set(getattr(tokenizer, "all_special_ids", []))
        self.vocab = [i for i in range(min(len(tokenizer), 50_000)) if i not in special]

    def make(self, n: int) -> tuple[str, int]:
        ids = [self.rng.choice(self.vocab) for _ in range(n)]
        text = self.tok.decode(ids)
        ids = self.tok(text, add_special_tokens=False).input_ids[:n]
        text = self.tok.decode(ids)
        return text, len(self.tok(text, add_special_tokens=False).input_ids)


def build_workload(*, num_requests: int, rate: float, arrival: str, burstiness: float, input_len: Length,
                   output_len: Length, prefix_len: int, num_prefix_groups: int, slo_classes: list[SLO],
                   turns: int, tokenizer, seed: int, slo_order: str = "round_robin") -> list[RequestSpec]:
    """Compose the synthetic workload: per-request lengths, optional shared prefixes, SLO classes round-robin."""
    rng = random.Random(seed)
    maker = PromptMaker(tokenizer, rng)
    prefixes = [maker.make(prefix_len) for _ in range(num_prefix_groups)] if prefix_len else []
    times = arrival_times(num_requests, rate, arrival, rng, burstiness)
    specs = []
    for i, t in enumerate(times):
        body, n = maker.make(input_len.sample(rng))
        # a multi-turn session's shared prefix opens its first turn (a system prompt: the later
        # turns follow it in the history), one group per session
        if prefixes and (turns == 1 or i % turns == 0):
            body = prefixes[(i // turns) % len(prefixes)][0] + body  # (counted whole: tokens may merge where they meet)
            n = len(tokenizer(body, add_special_tokens=False).input_ids)
        slo = rng.choice(slo_classes) if slo_order == "random" else slo_classes[i % len(slo_classes)]
        specs.append(RequestSpec(i, t, body, n, output_len.sample(rng), slo,
                                 session=(i // turns) if turns > 1 else None))
    return specs


def load_trace(path: Path, tokenizer, seed: int, slo_classes: list[SLO], time_scale: float = 1.0) -> list[RequestSpec]:
    """JSONL: one request a line with ``timestamp`` (s), ``input_length``, ``output_length``."""
    rng = random.Random(seed)
    maker = PromptMaker(tokenizer, rng)
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append((float(row["timestamp"]), int(row["input_length"]), int(row["output_length"])))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{lineno}: bad trace line ({e}); expected timestamp, input_length, output_length") from None
    if not rows:
        raise ValueError(f"{path}: no requests in trace")
    t0 = min(r[0] for r in rows)
    specs = []
    for i, (ts, n_in, n_out) in enumerate(sorted(rows)):
        text, n = maker.make(max(1, n_in))
        specs.append(RequestSpec(i, (ts - t0) * time_scale, text, n, max(1, n_out), slo_classes[i % len(slo_classes)]))
    return specs
