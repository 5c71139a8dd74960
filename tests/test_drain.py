"""Draining (SIGTERM, or POST /admin/drain: a preemption notice): no new request is admitted, the
ones in flight finish within the grace period, what is left then ends with an error, and the
server exits 0. The engine is held (SIGSTOP) while the drain starts, so that the request is still
in flight whatever the speed of the tiny model."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx

from server_helpers import ServerProcess

ARGS = ("--num-blocks", "128", "--max-model-len", "512", "--max-num-seqs", "4")
LONG = {"prompt": [1, 2, 3], "max_tokens": 480, "ignore_eos": True, "stream": True,
        "stream_options": {"include_usage": True}}


def in_flight(url: str, headers: dict | None = None) -> tuple[threading.Thread, dict]:
    """A stream sent on a thread of its own: (the thread, where its status and events land)."""
    out: dict = {}

    def run() -> None:
        with httpx.Client(timeout=60) as c, c.stream("POST", url + "/v1/completions", json=LONG,
                                                    headers=headers or {}) as r:
            out["status"] = r.status_code
            out["events"] = [line[6:] if line == "data: [DONE]" else json.loads(line[6:])
                             for line in r.iter_lines() if line.startswith("data: ")] if r.status_code == 200 \
                else json.loads(r.read())

    t = threading.Thread(target=run)
    t.start()
    return t, out


def wait_in_flight(srv, n: int = 1) -> None:
    deadline = time.monotonic() + 10
    while srv.stats()["num_requests_in_flight"] < n:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_sigterm_finishes_the_requests_in_flight_refuses_new_ones_and_exits_0(tiny_llama):
    srv = ServerProcess("--model", str(tiny_llama[1]), *ARGS, "--drain-grace", "60")
    engine = srv.stats()["engine_pid"]
    os.kill(engine, signal.SIGSTOP)
    try:
        t, out = in_flight(srv.url)
        wait_in_flight(srv)
        srv.proc.send_signal(signal.SIGTERM)
        refused = httpx.post(srv.url + "/v1/completions", json={"prompt": [1, 2], "max_tokens": 2})
        health = httpx.get(srv.url + "/health")
    finally:
        os.kill(engine, signal.SIGCONT)
    t.join(60)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
    assert health.status_code == 503 and health.json()["error"]["code"] == "draining"
    rest = out["events"]
    assert out["status"] == 200 and rest[-1] == "[DONE]" and rest[-2]["usage"]["completion_tokens"] == 480
    assert srv.proc.wait(30) == 0


def test_what_outlasts_the_grace_ends_with_an_error_and_the_server_exits_0(tiny_llama):
    srv = ServerProcess("--model", str(tiny_llama[1]), *ARGS, "--api-key", "k")
    auth = {"Authorization": "Bearer k"}
    assert httpx.post(srv.url + "/admin/drain", params={"grace": 0}).status_code == 401  # (an operator's route)
    engine = srv.stats()["engine_pid"]
    os.kill(engine, signal.SIGSTOP)
    try:
        t, out = in_flight(srv.url, auth)
        wait_in_flight(srv)
        d = httpx.post(srv.url + "/admin/drain", params={"grace": 0.5}, headers=auth)
        t.join(30)
    finally:
        os.kill(engine, signal.SIGCONT)
    assert d.status_code == 202 and d.json() == {"draining": True, "grace_s": 0.5}
    assert out["status"] == 503
    err = out["events"]["error"]
    assert err["code"] == "engine_dead" and "server drained: its 0.5 s of grace ran out" in err["message"]
    assert srv.proc.wait(30) == 0
