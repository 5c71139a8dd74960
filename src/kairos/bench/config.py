"""Configuration of one `kairos bench` invocation (the CLI flags are generated from it)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from kairos.bench.workloads import SLO, Length


@dataclass(frozen=True)
class BenchConfig:
    base_url: str = field(default="http://127.0.0.1:8000", metadata={"help": "server root (without /v1)"})
    model: str | None = field(default=None, metadata={"help": "model name (default: the server's first model)"})
    endpoint: str = field(default="chat", metadata={"help": "chat or completions"})
    tokenizer: str = field(default="default", metadata={"help": "tokenizer for prompt lengths: HF dir, .gguf, or default"})
    num_requests: int = field(default=100, metadata={"help": "requests per run"})
    num_warmups: int = field(default=0, metadata={"help": "requests sent (all at once, not measured) before the first run, of the workload's shape but other prompts (as vLLM's --num-warmups)"})
    rate: float = field(default=float("inf"), metadata={"help": "requests/s (inf: all at once)"})
    arrival: str = field(default="poisson", metadata={"help": "poisson, gamma or constant"})
    burstiness: float = field(default=1.0, metadata={"help": "gamma shape (< 1 is burstier)"})
    input_len: str = field(default="128", metadata={"help": "prompt tokens: N, uniform:LO:HI, normal:MEAN:STD"})
    output_len: str = field(default="128", metadata={"help": "output tokens: N, uniform:LO:HI, normal:MEAN:STD"})
    prefix_len: int = field(default=0, metadata={"help": "shared prefix tokens (system prompt / few-shot)"})
    num_prefix_groups: int = field(default=1, metadata={"help": "distinct shared prefixes"})
    turns: int = field(default=1, metadata={"help": "turns per multi-turn chat session"})
    max_concurrency: int | None = field(default=None, metadata={"help": "requests in flight at most (a request due meanwhile waits for a slot), as vLLM's"})
    slo: tuple[str, ...] = field(default=(), metadata={"help": "SLO class [NAME:]ttft_ms=..,tpot_ms=..,deadline_ms=..,priority=.. (repeatable; round-robin; NAME default: default; priority: the body field, as is: vLLM serves lower values first, Kairos higher)"})
    trace: str | None = field(default=None, metadata={"help": "JSONL trace: timestamp, input_length, output_length (replayed at its own times)"})
    sweep: str | None = field(default=None, metadata={"help": "comma-separated rates to sweep (overrides --rate; each rate draws its own prompts)"})
    target_attainment: float = field(default=0.9, metadata={"help": "attainment that defines capacity in a sweep"})
    slo_order: str = field(default="round_robin", metadata={"help": "how requests take the --slo classes: round_robin (in turn) or random (each drawn at random: no class pattern for a dispatcher to fall into)"})
    send_slo: bool = field(default=True, metadata={"help": "send SLOs as Kairos body fields and headers"})
    extra_body: str | None = field(default=None, metadata={"help": "a JSON object merged into every request body, e.g. '{\"response_format\": {\"type\": \"json_object\"}}' or sampling options (as SGLang's --extra-request-body); stream and the prompt stay the bench's"})
    timeout: float = field(default=600.0, metadata={"help": "client timeout per request (the whole answer), seconds"})
    api_key: str | None = field(default=None, repr=False, metadata={"help": "sent as 'Authorization: Bearer KEY' to --base-url (default: $OPENAI_API_KEY if set, as vLLM's client; never written to the results)"})
    seed: int = field(default=0, metadata={"help": "workload seed"})
    out: str = field(default="results/bench", metadata={"help": "path prefix of the JSON and PNG outputs"})
    plots: bool = field(default=True, metadata={"help": "write PNG plots"})

    def __post_init__(self) -> None:
        if self.endpoint not in ("chat", "completions"):
            raise ValueError(f"endpoint must be chat or completions, got {self.endpoint!r}")
        if self.num_requests < 1 or self.num_warmups < 0:
            raise ValueError(f"num_requests must be >= 1 and num_warmups >= 0, got {self.num_requests} and {self.num_warmups}")
        if not self.rate > 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")
        if not self.burstiness > 0 or not self.timeout > 0:
            raise ValueError(f"burstiness and timeout must be > 0, got {self.burstiness} and {self.timeout}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.trace and self.sweep:
            raise ValueError("a trace is replayed at its own timestamps: --sweep does not apply to it")
        if self.arrival not in ("poisson", "gamma", "constant"):
            raise ValueError(f"arrival must be poisson, gamma or constant, got {self.arrival!r}")
        if self.slo_order not in ("round_robin", "random"):
            raise ValueError(f"slo_order must be round_robin or random, got {self.slo_order!r}")
        if self.turns < 1 or self.num_prefix_groups < 1 or self.prefix_len < 0:
            raise ValueError("turns and num_prefix_groups must be >= 1, prefix_len >= 0")
        if not 0 < self.target_attainment <= 1:
            raise ValueError(f"target_attainment must be in (0, 1], got {self.target_attainment}")
        Length.parse(self.input_len), Length.parse(self.output_len), self.slo_classes(), self.rates(), self.extra()

    def extra(self) -> dict:
        """``extra_body`` as a dict ({} without one)."""
        if self.extra_body is None:
            return {}
        try:
            extra = json.loads(self.extra_body)
        except ValueError as e:
            raise ValueError(f"extra_body is not JSON: {e}") from None
        if not isinstance(extra, dict):
            raise ValueError("extra_body must be a JSON object")
        return extra

    def slo_classes(self) -> list[SLO]:
        classes = [SLO.parse(s) for s in self.slo] or [SLO()]
        names = [c.name for c in classes]
        if len(set(names)) < len(names):  # (requests are judged by their class's name)
            raise ValueError(f"slo: two classes are named {next(n for n in names if names.count(n) > 1)!r}")
        return classes

    def rates(self) -> list[float]:
        if not self.sweep:
            return [self.rate]
        try:
            rates = [float(x) for x in self.sweep.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"sweep must be comma-separated rates, got {self.sweep!r}") from None
        if not rates or not all(r > 0 for r in rates):  # (NaN too)
            raise ValueError(f"sweep rates must be > 0, got {self.sweep!r}")
        return rates
