"""The router's Prometheus metrics (a registry of its own)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class RouterMetrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("kairos_router_requests", "Requests relayed, by replica and status", ["replica", "status"], registry=r)
        self.decisions = Counter("kairos_router_decisions", "Routing decisions, by policy and what decided", ["policy", "reason"], registry=r)
        self.refusals = Counter("kairos_router_refusals", "Requests the router answered itself with a refusal", ["reason"], registry=r)
        self.retries = Counter("kairos_router_retries", "Requests sent to a second replica, by why the first failed", ["reason"], registry=r)
        self.overhead = Histogram("kairos_router_overhead_seconds", "Arrival to the request's send to its replica",
                                  buckets=(1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1), registry=r)
        self.healthy = Gauge("kairos_router_replica_healthy", "1 while a replica is in the fleet", ["replica"], registry=r)
        self.in_flight = Gauge("kairos_router_replica_in_flight", "Requests in flight at a replica", ["replica"], registry=r)
        self.matched = Counter("kairos_router_prefix_matched_tokens", "Prompt tokens found cached on the chosen replica", registry=r)
        self.prompt = Counter("kairos_router_prompt_tokens", "Prompt tokens routed", registry=r)

    def render(self, replicas) -> bytes:
        for rep in replicas:
            self.healthy.labels(rep.url).set(1 if rep.healthy else 0)
            self.in_flight.labels(rep.url).set(rep.in_flight)
        return generate_latest(self.registry)
