"""Configuration of the router and of a fleet of local replicas."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RouterConfig:
    upstream: tuple[str, ...] = field(default=(), metadata={"help": "base URL of an OpenAI-compatible server to route to (repeatable): a Kairos replica, or vLLM, SGLang, llama.cpp"})
    routing_policy: str = field(default="slo", metadata={"help": "how a request picks its replica: slo, cache_aware, least_load or round_robin"})
    tokenizer: str | None = field(default=None, metadata={"help": "model (path, or 'default') whose tokenizer and chat template the router reads prompts with, to match them against the replicas' prefix caches (default: the served model when the router starts its replicas; else prompts are matched as text)"})
    balance_beta: float = field(default=0.5, metadata={"help": "cache_aware: a replica's score is the share of the prompt it holds cached minus this times its load relative to the busiest"})
    balance_abs_threshold: int = field(default=8, metadata={"help": "cache_aware: the fleet is out of balance (the least loaded replica gets the request) when the busiest has this many more requests in flight than the least busy..."})
    balance_rel_threshold: float = field(default=1.5, metadata={"help": "...and this many times as many"})
    slo_slack_tolerance: float = field(default=0.15, metadata={"help": "slo: replicas whose forecast leaves a request's tightest objective within this share of the best one's slack count as equal, and the least loaded of them gets it"})
    approx_cache_tokens: int = field(default=1 << 17, metadata={"help": "tokens of what it sent that the router takes a replica to hold, for replicas that do not report their prefix cache"})
    health_interval: float = field(default=1.0, metadata={"help": "seconds between health checks of a replica without a state channel; an unhealthy one is probed with backoff up to 8x this"})
    connect_timeout: float = field(default=5.0, metadata={"help": "seconds to open a connection to a replica (a failure before the first byte is retried once on another)"})
    max_sessions: int = field(default=100_000, metadata={"help": "sticky sessions remembered (X-Kairos-Session header or the OpenAI user field), least recent forgotten first"})

    def __post_init__(self) -> None:
        from kairos.cluster.policies import POLICIES

        if self.routing_policy not in POLICIES:
            raise ValueError(f"routing_policy must be one of {', '.join(sorted(POLICIES))}, got {self.routing_policy!r}")
        for url in self.upstream:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"upstream: {url!r} is not an http(s):// URL")
        if self.balance_beta < 0 or self.balance_abs_threshold < 0 or self.balance_rel_threshold < 1:
            raise ValueError("balance_beta and balance_abs_threshold must be >= 0, balance_rel_threshold >= 1")
        if not 0 <= self.slo_slack_tolerance <= 1:
            raise ValueError(f"slo_slack_tolerance must be in [0, 1], got {self.slo_slack_tolerance}")
        if self.approx_cache_tokens < 0 or self.max_sessions < 0:
            raise ValueError("approx_cache_tokens and max_sessions must be >= 0")
        if not (self.health_interval > 0 and self.connect_timeout > 0):
            raise ValueError("health_interval and connect_timeout must be > 0 s")


@dataclass(frozen=True)
class FleetConfig:
    replicas: int = field(default=1, metadata={"help": "engine replicas behind one router on this machine (1: no router)"})
    cpus_per_replica: int | None = field(default=None, metadata={"help": "cores each replica is pinned to (default: this machine's cores / replicas)"})
    max_restarts: int = field(default=5, metadata={"help": "restarts of a replica that exits, per 5 minutes, before it is left down"})

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        if self.cpus_per_replica is not None and self.cpus_per_replica < 1:
            raise ValueError(f"cpus_per_replica must be >= 1, got {self.cpus_per_replica}")
        if self.max_restarts < 0:
            raise ValueError("max_restarts must be >= 0")

    def core_sets(self, available: list[int] | None = None) -> list[list[int]]:
        """The cores of each replica: consecutive shares of ``available`` (default: this process's);
        shares wrap around when more are asked for than there are cores."""
        cores = sorted(available if available is not None else os.sched_getaffinity(0))
        per = self.cpus_per_replica or max(1, len(cores) // self.replicas)
        return [[cores[(i * per + j) % len(cores)] for j in range(per)] for i in range(self.replicas)]
