"""The router over two real replicas of a tiny model on loopback: routing follows what a replica
reports it holds cached, an SLO request goes where it can be met (or is refused by the router),
a replica killed before a request's first byte is retried on the other, the fleet heals when it
comes back, bad input is answered by the router itself, and ``kairos serve --replicas 2`` stops
every process it started."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest

from server_helpers import ServerProcess, free_port, pid_alive

REPLICA = ("--num-blocks", "128", "--max-model-len", "512", "--max-num-seqs", "8")
WORDS = "yes no maybe n=12 x-ab "


def wait_for(cond, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def fleet(tiny_tok):
    path = str(tiny_tok[1])
    # replica 0 takes prompts in chunks of 16 tokens, replica 1 in chunks of 256: a long prompt's
    # first token comes sooner on replica 1
    reps = [ServerProcess("--model", path, *REPLICA, "--max-num-batched-tokens", "16"),
            ServerProcess("--model", path, *REPLICA, "--max-num-batched-tokens", "256")]
    # (--slo-slack-tolerance 0: the replica with the most slack, however little more, gets an SLO request)
    router = ServerProcess("--upstream", reps[0].url, "--upstream", reps[1].url, "--tokenizer", path,
                           "--health-interval", "0.25", "--slo-slack-tolerance", "0", command="router")
    wait_for(lambda: httpx.get(router.url + "/health").json().get("replicas_healthy") == 2, what="both replicas in")
    yield router, reps, path
    router.stop()
    for r in reps:
        r.stop()


def complete(url: str, prompt: str, **kw) -> httpx.Response:
    headers = kw.pop("headers", {})
    return httpx.post(url + "/v1/completions", json={"prompt": prompt, "max_tokens": 4, **kw}, headers=headers,
                      timeout=60)


def decisions(metrics: str, reason: str) -> float:
    line = f'kairos_router_decisions_total{{policy="slo",reason="{reason}"}} '
    return next((float(x[len(line):]) for x in metrics.splitlines() if x.startswith(line)), 0.0)


def router_stats(router) -> dict:
    return httpx.get(router.url + "/stats").json()


def test_routing_follows_what_a_replica_reports_it_holds(fleet):
    router, reps, _ = fleet
    prompt = WORDS * 30  # (~150 tokens: 9 full blocks)
    before = httpx.get(router.url + "/metrics").text
    assert complete(reps[1].url, prompt).status_code == 200  # straight to replica 1: the router never saw it
    wait_for(lambda: router_stats(router)["replicas"][1]["cached_blocks"] >= 8, what="replica 1's cache report")
    r = complete(router.url, prompt + "yes yes")
    assert r.status_code == 200 and r.headers["x-kairos-replica"] == reps[1].url
    assert decisions(httpx.get(router.url + "/metrics").text, "prefix") == decisions(before, "prefix") + 1
    # (without the report both replicas were idle and empty: the tie goes to replica 0)
    r = complete(router.url, "maybe " * 40)
    assert r.headers["x-kairos-replica"] == reps[0].url


def test_an_slo_request_goes_where_it_can_be_met_or_is_refused_by_the_router(fleet):
    router, reps, _ = fleet
    prompt = "x-ab n=12 " * 40 + "maybe"  # (~200 tokens: 13 chunks on replica 0, 1 on replica 1)
    r = complete(router.url, prompt, slo={"ttft_ms": 60_000})
    assert r.status_code == 200 and r.headers["x-kairos-replica"] == reps[1].url
    assert r.json()["usage"]["kairos"]["slo_met"] is True
    before = [s["stats"].get("requests_slo_refused", 0) for s in router_stats(router)["replicas"]]
    r = complete(router.url, prompt + " no", slo={"ttft_ms": 0.001})
    assert r.status_code == 429
    err = r.json()["error"]
    assert err["code"] == "slo_infeasible" and err["param"] == "slo" and err["type"] == "slo_infeasible_error"
    assert err["message"].startswith("no replica can meet the SLO: predicted TTFT ")
    assert set(err["predicted"]) == {"predicted_ttft_ms", "predicted_tpot_ms", "predicted_e2e_ms"}
    # no replica was asked
    assert [s["stats"].get("requests_slo_refused", 0) for s in router_stats(router)["replicas"]] == before


class SlowUpstream:
    """An OpenAI-compatible stand-in on a thread of its own: a completion is a stream of one event
    every 20 ms for 10 s; ``gone`` is set when the router closes a stream before its end."""

    def __init__(self):
        self.port, self.gone, self.served = free_port(), threading.Event(), 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        ready.set()
        self.loop.run_forever()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                n = next((int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")), 0)
                await r.readexactly(n)
                line = head.split(b"\r\n", 1)[0]
                if b"/v1/completions" not in line:
                    status, body = (b"404 Not Found", b"{}") if b"/stats" in line else (b"200 OK", b'{"data": []}')
                    w.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
                    await w.drain()
                    continue
                self.served += 1
                w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                event = b'data: {"choices": [{"index": 0, "text": "x"}]}\n\n'
                try:
                    for _ in range(500):
                        w.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
                        await w.drain()
                        await asyncio.sleep(0.02)
                except ConnectionError:
                    self.gone.set()  # (closed mid-stream)
                    raise
                w.write(b"0\r\n\r\n")
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            w.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_a_client_gone_mid_stream_closes_the_relay_at_once():
    up = SlowUpstream()
    router = ServerProcess("--upstream", f"http://127.0.0.1:{up.port}", "--health-interval", "0.25", command="router")
    try:
        wait_for(lambda: router_stats(router)["replicas_healthy"] == 1, what="the stand-in in")
        assert router_stats(router)["replicas"][0]["kairos"] is False  # (no state channel: health checks)
        body = {"prompt": "yes", "max_tokens": 500, "stream": True}
        with httpx.Client(timeout=60) as c, c.stream("POST", router.url + "/v1/completions", json=body) as r:
            assert r.status_code == 200 and r.headers["x-kairos-replica"] == f"http://127.0.0.1:{up.port}"
            chunks = r.iter_bytes()  # (kept: a generator dropped closes the response)
            next(chunks)
            assert router_stats(router)["replicas"][0]["in_flight"] == 1 and not up.gone.is_set()
        # (the client left 10 s before the stream's end): the router's books and its upstream connection end
        wait_for(lambda: router_stats(router)["replicas"][0]["in_flight"] == 0, timeout=5, what="in_flight back to 0")
        assert up.gone.wait(5) and up.served == 1
    finally:
        router.stop()
        up.stop()


def test_bad_input_is_answered_by_the_router_as_the_server_answers_it(fleet):
    router, reps, _ = fleet
    sent_before = httpx.get(router.url + "/metrics").text.count("kairos_router_requests_total{")
    for body in ({"prompt": "hi", "max_tokens": "many"}, {"prompt": "hi", "model": "gpt-9"}, {"max_tokens": 3}):
        via, direct = (httpx.post(u + "/v1/completions", json=body) for u in (router.url, reps[0].url))
        assert (via.status_code, via.json()) == (direct.status_code, direct.json())
        assert via.status_code in (400, 404) and "x-kairos-replica" not in via.headers
    bad = httpx.post(router.url + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("request body is not valid JSON")
    assert httpx.get(router.url + "/metrics").text.count("kairos_router_requests_total{") == sent_before


def test_a_replica_killed_before_the_first_byte_is_retried_elsewhere_and_the_fleet_heals(fleet):
    router, reps, path = fleet
    session = {"X-Kairos-Session": "conversation-1"}
    first = complete(router.url, "no " * 20, headers=session)
    victim = [r.url for r in reps].index(first.headers["x-kairos-replica"])
    other = reps[1 - victim]
    reps[victim].proc.send_signal(signal.SIGSTOP)  # (it takes the next request and never answers)
    with httpx.Client(timeout=60) as c:
        pending = c.build_request("POST", router.url + "/v1/completions", json={"prompt": "no " * 21, "max_tokens": 4},
                                  headers=session)

        out = {}
        t = threading.Thread(target=lambda: out.setdefault("r", c.send(pending)))
        t.start()
        # (sticky: sent to the stopped replica, where it waits)
        wait_for(lambda: router_stats(router)["replicas"][victim]["in_flight"] == 1, what="the request at the victim")
        reps[victim].proc.kill()
        t.join(30)
    r = out["r"]
    assert r.status_code == 200 and r.headers["x-kairos-replica"] == other.url
    retries = [line for line in httpx.get(router.url + "/metrics").text.splitlines()
               if line.startswith("kairos_router_retries_total{")]
    assert len(retries) == 1 and retries[0].endswith(" 1.0")  # (the connection's end: reset, or closed mid-answer)
    wait_for(lambda: not router_stats(router)["replicas"][victim]["healthy"], what="the dead replica out")
    assert complete(router.url, "yes " * 10).headers["x-kairos-replica"] == other.url
    # it comes back on its port: the router puts it back
    port = reps[victim].port
    args = ("--max-num-batched-tokens", "16" if victim == 0 else "256")
    reps[victim] = ServerProcess("--model", path, *REPLICA, *args, port=port)
    wait_for(lambda: router_stats(router)["replicas"][victim]["healthy"], what="the restarted replica in")
    assert router_stats(router)["replicas_healthy"] == 2


def test_serve_with_replicas_stops_every_process_on_sigterm(tiny_tok):
    srv = ServerProcess("--model", str(tiny_tok[1]), *REPLICA, "--replicas", "2", timeout=240)
    try:
        stats = wait_for(lambda: (s := srv.stats())["replicas_healthy"] == 2 and s, what="two replicas")
        assert stats["routing_policy"] == "slo"
        r = complete(srv.url, "yes " * 8)
        assert r.status_code == 200 and r.headers["x-kairos-replica"] in [x["url"] for x in stats["replicas"]]
        pids = [p.pid for p in psutil.Process(srv.proc.pid).children(recursive=True)]
        engines = {x["stats"]["engine_pid"] for x in stats["replicas"]}
        assert len(pids) >= 4 and engines <= set(pids)  # (two replicas, each an API process and an engine)
        cores = {tuple(psutil.Process(p).cpu_affinity()) for p in pids if p not in engines}
        assert len(cores) == min(2, len(os.sched_getaffinity(0)))  # each replica on its share of the cores
    finally:
        code = srv.stop(signal.SIGTERM, timeout=60)
    assert code == 0
    assert [p for p in pids if pid_alive(p)] == []


def test_router_without_upstreams_is_refused():
    r = subprocess.run([sys.executable, "-m", "kairos.cli", "router"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "kairos router: give at least one --upstream URL" in r.stderr
