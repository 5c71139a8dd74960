"""Prometheus metrics of one server (its own registry: nothing global is changed)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)


class ServerMetrics:
    def __init__(self, model_name: str):
        r = self.registry = CollectorRegistry()
        labels = ["model_name"]
        self.model = model_name
        self.requests = Counter("kairos_requests", "Requests by outcome", labels + ["outcome"], registry=r)
        self.prompt_tokens = Counter("kairos_prompt_tokens", "Prompt tokens processed", labels, registry=r)
        self.generation_tokens = Counter("kairos_generation_tokens", "Tokens generated", labels, registry=r)
        self.ttft = Histogram("kairos_time_to_first_token_seconds", "Time to first token", labels, buckets=_LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("kairos_time_per_output_token_seconds", "Mean time per output token after the first", labels, buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("kairos_inter_token_latency_seconds", "Time between consecutive tokens", labels, buckets=_LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("kairos_e2e_request_latency_seconds", "Arrival to last token", labels, buckets=_LATENCY_BUCKETS, registry=r)
        self.slo = Counter("kairos_slo_requests", "SLO requests by class and outcome (met, missed, refused, expired)",
                           labels + ["slo_class", "outcome"], registry=r)
        self.engine = Gauge("kairos_engine_stat", "Engine state (running, waiting, KV blocks, prefix cache)", labels + ["stat"], registry=r)

    def finished(self, outcome: str, prompt_tokens: int, token_times: list[float], arrival: float, end: float,
                 slo=None, slo_report: dict | None = None) -> None:
        m = self.model
        self.requests.labels(m, outcome).inc()
        if slo is not None and outcome in ("finished", "refused", "expired"):
            result = outcome if outcome != "finished" else ("met" if slo_report and slo_report["slo_met"] else "missed")
            self.slo.labels(m, slo.name, result).inc()
        self.prompt_tokens.labels(m).inc(prompt_tokens)
        self.generation_tokens.labels(m).inc(len(token_times))
        if token_times:
            self.ttft.labels(m).observe(token_times[0] - arrival)
            itl = self.itl.labels(m)  # (looked up once: this runs per token)
            for a, b in zip(token_times, token_times[1:]):
                itl.observe(b - a)
            if len(token_times) > 1:
                self.tpot.labels(m).observe((token_times[-1] - token_times[0]) / (len(token_times) - 1))
        self.e2e.labels(m).observe(end - arrival)

    def render(self, engine_stats: dict[str, float]) -> bytes:
        for k, v in engine_stats.items():
            self.engine.labels(self.model, k).set(v)
        return generate_latest(self.registry)
