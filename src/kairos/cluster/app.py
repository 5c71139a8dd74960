"""The router's HTTP front: the OpenAI routes relayed to replicas, and its own health, models,
stats and metrics."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response

import kairos
from kairos.cluster.router import Router
from kairos.server.app import install_common
from kairos.server.config import ServerConfig
from kairos.server.middleware import error
from kairos.server.protocol import ChatCompletionRequest, CompletionRequest
from kairos.server.routes_openai import cancel_on_disconnect

SUMMED = ("num_running", "num_waiting", "num_requests_in_flight", "kv_blocks_total", "kv_blocks_free",
          "kv_blocks_used", "prefix_cache_queried_tokens", "prefix_cache_hit_tokens", "requests_expired",
          "num_preemptions", "requests_slo_refused", "requests_slo_best_effort")


def build_router_app(router: Router, http: ServerConfig) -> FastAPI:
    app = FastAPI(title="Kairos router", version=kairos.__version__)
    install_common(app, http.max_body_bytes, http.api_key, http.allowed_origins)

    # (a client gone before the answer starts: the relay is cancelled, which closes the replica's
    # connection, and the replica aborts the request)
    @app.post("/v1/chat/completions")
    @cancel_on_disconnect
    async def chat(req: ChatCompletionRequest, request: Request):
        return await router.dispatch("/v1/chat/completions", req, await request.body(), request.headers)

    @app.post("/v1/completions")
    @cancel_on_disconnect
    async def completions(req: CompletionRequest, request: Request):
        return await router.dispatch("/v1/completions", req, await request.body(), request.headers)

    @app.get("/v1/models")
    async def models():
        seen: dict[str, dict] = {}
        for rep in router.replicas:
            for m in rep.models:
                seen.setdefault(m.get("id"), m)
        return {"object": "list", "data": list(seen.values())}

    @app.get("/health")
    async def health():
        up = router.healthy()
        if not up:
            return error(503, "no replica is available", "server_error", code="no_replica")
        return {"status": "ok", "replicas": len(router.replicas), "replicas_healthy": len(up)}

    @app.get("/version")
    async def version():
        return {"version": kairos.__version__}

    @app.get("/stats")
    async def stats():
        reps = [{"url": r.url, "healthy": r.healthy, "kairos": r.kairos, "why_down": r.why_down or None,
                 "in_flight": r.in_flight, "cached_blocks": len(r.cached), "stats": r.stats} for r in router.replicas]
        total = {k: sum(r.stats.get(k, 0) for r in router.replicas if r.healthy) for k in SUMMED}
        hit, asked = total["prefix_cache_hit_tokens"], total["prefix_cache_queried_tokens"]
        return {**total, "prefix_cache_hit_rate": hit / asked if asked else 0.0, "routing_policy": router.cfg.routing_policy,
                "replicas_healthy": sum(r.healthy for r in router.replicas), "replicas": reps}

    @app.get("/metrics")
    async def metrics():
        return Response(router.metrics.render(router.replicas), media_type="text/plain; version=0.0.4")

    return app
