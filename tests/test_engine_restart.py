"""The engine process dies under a running server: the server answers 503 engine_dead meanwhile,
starts a new engine by itself and serves again; past --engine-restarts it exits 1."""

from __future__ import annotations

import os
import signal
import time

import httpx

from server_helpers import ServerProcess, pid_alive

ARGS = ("--num-blocks", "64", "--max-model-len", "128", "--max-num-seqs", "4")


def complete(url: str) -> httpx.Response:
    return httpx.post(url + "/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 4}, timeout=60)


def test_a_dead_engine_is_started_anew_and_the_server_serves_again(tiny_llama):
    srv = ServerProcess("--model", str(tiny_llama[1]), *ARGS)
    try:
        assert complete(srv.url).status_code == 200
        old = srv.stats()["engine_pid"]
        os.kill(old, signal.SIGKILL)
        # meanwhile: 503 engine_dead (the tiny model's engine takes seconds to start)
        deadline, seen = time.monotonic() + 30, None
        while time.monotonic() < deadline:
            r = complete(srv.url)
            if r.status_code == 503:
                seen = r.json()["error"]
                break
            time.sleep(0.02)
        assert seen is not None and seen["code"] == "engine_dead" and seen["type"] == "server_error"
        assert httpx.get(srv.url + "/health").status_code == 503
        deadline = time.monotonic() + 120
        while httpx.get(srv.url + "/health").status_code != 200:
            assert time.monotonic() < deadline, "the engine did not come back"
            time.sleep(0.1)
        new = srv.stats()["engine_pid"]
        assert new != old and pid_alive(new) and not pid_alive(old)
        r = complete(srv.url)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
        assert srv.proc.poll() is None
    finally:
        assert srv.stop() == 0


def test_past_its_restarts_the_server_exits_1(tiny_llama):
    srv = ServerProcess("--model", str(tiny_llama[1]), *ARGS, "--engine-restarts", "0")
    os.kill(srv.stats()["engine_pid"], signal.SIGKILL)
    assert srv.proc.wait(60) == 1
