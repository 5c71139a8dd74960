"""The router's dispatch: a request's candidates (load, cached prefix, forecast per healthy
replica), the policy's decision, and the relay to the chosen replica, retried once on the next
best when the first fails before its first byte or refuses the SLO."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator

import aiohttp
from fastapi.responses import Response, StreamingResponse

from kairos.cluster.config import RouterConfig
from kairos.cluster.forecast import forecast, idle_forecast
from kairos.cluster.metrics import RouterMetrics
from kairos.cluster.policies import Ask, Candidate, Decision, Forecast, Tuning, make_policy
from kairos.cluster.prompts import PromptReader
from kairos.cluster.replica import Replica, watch
from kairos.server.middleware import error
from kairos.server.protocol import ChatCompletionRequest, CompletionRequest, slo_from
from kairos.server.serving import APIError
from kairos.wire.slo import SLO

# request headers relayed to a replica (the rest are hop-by-hop or set anew)
_RELAYED = {"authorization", "content-type", "accept", "user-agent", "x-request-id"}
_RETRIED_STATUS = {502, 503, 504}  # (the replica could not take it: another may)


class Router:
    def __init__(self, cfg: RouterConfig, replicas: list[Replica], reader: PromptReader,
                 api_key: str | None = None):
        self.cfg, self.replicas, self.reader = cfg, replicas, reader
        self.policy = make_policy(cfg.routing_policy, Tuning(cfg.balance_beta, cfg.balance_abs_threshold,
                                                             cfg.balance_rel_threshold, cfg.slo_slack_tolerance))
        self.metrics = RouterMetrics()
        self.sessions: OrderedDict[str, int] = OrderedDict()
        self._keys = itertools.count()
        self._auth = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.http: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.cfg.connect_timeout),
            auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding"))
        self._tasks = [asyncio.create_task(watch(r, self.http, self.cfg.health_interval, self._auth))
                       for r in self.replicas]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.http is not None:
            await self.http.close()

    def healthy(self) -> list[Replica]:
        return [r for r in self.replicas if r.healthy]

    def model_names(self) -> set[str]:
        return {m.get("id") for r in self.replicas for m in r.models} | {"default"}

    async def dispatch(self, path: str, req: ChatCompletionRequest | CompletionRequest, raw: bytes, headers) -> Response:
        arrival = time.perf_counter()
        names = self.model_names()
        if req.model is not None and len(names) > 1 and req.model not in names:
            shown = req.model.encode("utf-8", "backslashreplace").decode()
            served = ", ".join(f"`{n}`" for n in sorted(names - {"default"}))
            raise APIError(404, f"The model `{shown}` does not exist. Served: {served}.", "not_found_error",
                           param="model", code="model_not_found")
        try:
            slo, _ = slo_from(req.slo, req.priority, headers)
        except ValueError as e:
            raise APIError(400, str(e), param="slo") from None
        healthy = self.healthy()
        if not healthy:
            self.metrics.refusals.labels("no_replica").inc()
            raise APIError(503, "no replica is available: " + "; ".join(f"{r.url}: {r.why_down}" for r in self.replicas),
                           "server_error", code="no_replica")
        ids, exact, ntok = await self.reader.read(req)
        asked = getattr(req, "max_completion_tokens", None)
        asked = asked if asked is not None else req.max_tokens
        # (the server's defaults: 16 for completions, up to --default-max-tokens for chat)
        max_tokens = asked if asked is not None else 1024 if isinstance(req, ChatCompletionRequest) else 16
        now, hashes = time.monotonic(), {}
        cands = []
        for r in healthy:
            matched = r.matched(ids, hashes, exact, now)
            f = self._forecast(r, ntok, matched, max_tokens, slo)
            floor = idle_forecast(r.stats, ntok, matched, max_tokens) if f is not None and r.kairos else f
            cands.append(Candidate(r.index, r.in_flight, matched, f, floor))
        user = (req.model_extra or {}).get("user")  # (the OpenAI field: an end user's id, a string)
        session = headers.get("x-kairos-session") or (user if isinstance(user, str) else None)
        decision = self._sticky(session, cands) or self.policy.choose(Ask(ntok, slo), cands)
        self.metrics.decisions.labels(self.cfg.routing_policy, decision.reason).inc()
        if decision.refusal is not None:
            self.metrics.refusals.labels("slo_infeasible").inc()
            return _refusal(decision)
        matched = {c.index: c.matched for c in cands}
        self.metrics.prompt.inc(ntok)
        due = slo is not None and slo.ttft_ms is not None
        return await self._relay(path, raw, headers, decision, matched, ids, hashes, ntok, arrival, session, due)

    def _forecast(self, r: Replica, ntok: int, matched: int, max_tokens: int, slo: SLO | None) -> Forecast | None:
        if r.kairos and r.stats:
            due = slo is not None and slo.ttft_ms is not None
            return forecast(r.stats, ntok, matched, max_tokens, r.in_flight,
                            r.pending_prefill(time.monotonic(), ttft_only=due), due)
        if r.ttft_ewma is None:
            return None  # (nothing measured there yet)
        return Forecast(r.ttft_ewma, r.tpot_ewma or 0.0, r.ttft_ewma + (max_tokens - 1) * (r.tpot_ewma or 0.0))

    def _sticky(self, session: str | None, cands: list[Candidate]) -> Decision | None:
        if not session or self.cfg.max_sessions == 0:
            return None
        at = self.sessions.get(session)
        if at is None or all(c.index != at for c in cands):
            return None
        return Decision([at] + [c.index for c in cands if c.index != at], "sticky")

    def _stick(self, session: str | None, index: int) -> None:
        if session and self.cfg.max_sessions:
            self.sessions[session] = index
            self.sessions.move_to_end(session)
            while len(self.sessions) > self.cfg.max_sessions:
                self.sessions.popitem(last=False)

    async def _relay(self, path, raw, headers, decision: Decision, matched, ids, hashes, ntok, arrival,
                     session: str | None, due: bool) -> Response:
        relayed = {k: v for k, v in headers.items() if k in _RELAYED or k.startswith("x-kairos-")}
        last: Response | None = None
        for attempt, index in enumerate(decision.order[:2]):
            rep = self.replicas[index]
            uncached = max(0, ntok - matched.get(index, 0))
            rep.in_flight += 1
            key = next(self._keys)
            rep.pending[key] = (time.monotonic(), uncached, due)
            rep.remember(ids, hashes, time.monotonic())
            if attempt == 0:
                self.metrics.overhead.observe(time.perf_counter() - arrival)
            sent = time.perf_counter()
            resp = None
            try:
                resp = await self.http.post(rep.url + path, data=raw, headers=relayed)
                if resp.status in _RETRIED_STATUS or (resp.status == 429 and attempt == 0):
                    content = await resp.read()
                    resp.release()
                    answer = self._answer(rep, resp, content)
                    if resp.status == 429 and b"slo_infeasible" not in content:
                        return answer  # (a refusal of another kind stands)
                    last = answer
                    if attempt + 1 < len(decision.order[:2]):
                        self.metrics.retries.labels(f"status_{resp.status}").inc()
                    continue
                first = await resp.content.readany()  # a failure before the first byte is retried elsewhere
            except (aiohttp.ClientError, OSError) as e:
                rep.in_flight -= 1
                if resp is not None:
                    resp.close()
                if attempt + 1 < len(decision.order[:2]):
                    self.metrics.retries.labels(type(e).__name__).inc()
                if isinstance(e, aiohttp.ClientConnectorError):
                    rep.down(f"{type(e).__name__} relaying a request")
                last = error(502, f"replica {rep.url} failed before answering: {type(e).__name__}", "server_error",
                             code="replica_failed")
                continue
            except BaseException:  # (the client went away meanwhile)
                rep.in_flight -= 1
                if resp is not None:
                    resp.close()
                raise
            finally:
                rep.pending.pop(key, None)  # (started, or failed: no longer queued there)
            self._stick(session, index)
            self.metrics.matched.inc(matched.get(index, 0))
            self.metrics.requests.labels(rep.url, str(resp.status)).inc()
            out = {k: v for k, v in resp.headers.items() if k.lower() in ("content-type", "x-request-id")}
            out["x-kairos-replica"] = rep.url
            relay = Relay(rep, resp, first, sent)
            return RelayedResponse(relay.chunks(), relay.close, status_code=resp.status, headers=out)
        assert last is not None
        return last

    def _answer(self, rep: Replica, resp: aiohttp.ClientResponse, content: bytes) -> Response:
        rep.in_flight -= 1
        self.metrics.requests.labels(rep.url, str(resp.status)).inc()
        headers = {k: v for k, v in resp.headers.items() if k.lower() in ("content-type", "retry-after")}
        headers["x-kairos-replica"] = rep.url
        return Response(content, status_code=resp.status, headers=headers)


def _refusal(decision: Decision) -> Response:
    body = {"error": {"message": decision.refusal, "type": "slo_infeasible_error", "param": "slo",
                      "code": "slo_infeasible"}}
    if decision.forecast is not None:
        body["error"]["predicted"] = decision.forecast.as_ms()
    return Response(json.dumps(body), status_code=429, media_type="application/json")


class Relay:
    """One answer on its way from a replica to the client: its bytes as they come, and (``close``,
    once, however the response ended, also when it never started) the replica's books."""

    def __init__(self, rep: Replica, resp: aiohttp.ClientResponse, first: bytes, sent: float):
        self.rep, self.resp, self.first, self.sent = rep, resp, first, sent
        self.done = self.closed = False
        self.sse = "event-stream" in resp.headers.get("content-type", "")
        self.events = first.count(b"data: ") if self.sse else 0
        self.t_first = time.perf_counter()

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            if self.first:
                yield self.first
                async for chunk in self.resp.content.iter_any():
                    if self.sse:
                        self.events += chunk.count(b"data: ")
                    yield chunk
            self.done = True
        except (aiohttp.ClientError, OSError) as e:  # the replica went away mid-answer: said in the stream
            if self.sse:
                yield b"data: " + json.dumps({"error": {
                    "message": f"replica {self.rep.url} failed mid-answer: {type(e).__name__}", "type": "server_error",
                    "param": None, "code": "replica_failed"}}).encode() + b"\n\n"

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.rep.in_flight -= 1
        if self.done:
            self.resp.release()  # (read to its end: the connection goes back to the pool)
        else:
            self.resp.close()  # (the client left mid-answer: the replica sees the disconnect and aborts)
        if self.events > 2:  # (a stream: time to its first byte, then per event)
            self.rep.observe(self.t_first - self.sent, (time.perf_counter() - self.t_first) / (self.events - 1))


class RelayedResponse(StreamingResponse):
    """A streamed answer that runs ``on_close`` when it ends, however it ends."""

    def __init__(self, content, on_close, **kw):
        super().__init__(content, **kw)
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()
