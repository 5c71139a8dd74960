"""A real server on 127.0.0.1 against a hostile but fair client: grammars that would eat the
engine's memory, oversized and slow request heads and bodies, huge prompts, a stalled engine."""

from __future__ import annotations

import asyncio
import glob
import os
import signal
import socket
import time

import httpx
import pytest

from kairos.grammar.limits import regex_elements
from server_helpers import ServerProcess

KEY = "sk-hardening"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(tiny_tok):
    before = set(glob.glob("/tmp/kairos-*"))
    srv = ServerProcess("--model", str(tiny_tok[1]), "--num-blocks", "64", "--max-model-len", "128",
                        "--api-key", KEY, "--header-timeout", "1", "--body-timeout", "1", "--max-pending", "8")
    yield srv
    srv.stop()
    assert set(glob.glob("/tmp/kairos-*")) == before  # (the engine's socket folder goes with the server)


def engine_rss(srv) -> int:
    with open(f"/proc/{srv.stats()['engine_pid']}/status") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith("VmRSS:"))


def raw(srv, data: bytes, wait: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=wait) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_regexes_that_unroll_past_the_limit_are_refused_before_the_engine(server):
    assert regex_elements("((a{101}){100}){100}") == 1_010_000 and regex_elements("[0-9]{3}") == 3
    assert regex_elements(r"\p{L}((a{101}){100}){100}") == 1_010_001  # (Rust's syntax, read as a stand-in)
    url = server.url + "/v1/completions"
    body = {"prompt": "n=", "max_tokens": 4, "temperature": 0}
    rss = engine_rss(server)
    for i in range(64):  # (distinct: no compile is shared)
        rx = f"(({'ab'[i % 2]}{{{101 + i}}}){{100}}){{100}}"
        r = httpx.post(url, json=body | {"structured_outputs": {"regex": rx}}, headers=AUTH, timeout=30)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["message"] == (
            f"structured_outputs: structured output regex unrolls to {(101 + i) * 10000} elements (its repetitions "
            "multiplied out), more than 100000")
    assert engine_rss(server) - rss < 100 << 20
    schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": "^((a{101}){100}){100}$"}}}
    r = httpx.post(url, json=body | {"structured_outputs": {"json": schema}}, headers=AUTH, timeout=30)
    assert r.status_code == 400 and "unrolls to 1010002 elements" in r.json()["error"]["message"]  # (^ and $)
    r = httpx.post(url, json=body | {"structured_outputs": {"regex": "[0-9]{2}"}}, headers=AUTH, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["text"].isdigit()


def test_a_request_head_past_the_limit_is_431_and_slow_clients_are_cut_off(server):
    r = httpx.get(server.url + "/health", headers={"X-Big": "x" * (70 << 10)}, timeout=10)
    assert r.status_code == 431
    assert r.json()["error"]["message"] == "request line and headers exceed 65536 bytes"
    # a header that never ends is counted as it comes (the parser hands over none of it)
    out = raw(server, b"GET /health HTTP/1.1\r\nX-Endless: " + b"x" * (70 << 10))
    assert out.startswith(b"HTTP/1.1 431 ")
    # headers that never end, then a body shorter than its Content-Length: 408 and the connection closed
    out = raw(server, b"GET /health HTTP/1.1\r\nHost: x\r\n")
    assert out.startswith(b"HTTP/1.1 408 ") and b"did not send its request within 1 s" in out
    head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
    out = raw(server, head + b"Authorization: Bearer " + KEY.encode() + b"\r\n\r\n{\"prompt\":")
    assert out.startswith(b"HTTP/1.1 408 ") and b"did not send its body within 1 s" in out
    # answered before its body came (no key: 401): the connection goes, with no 408 after the answer
    out = raw(server, head + b"\r\n{\"prompt\":")
    assert out.startswith(b"HTTP/1.1 401 ") and b"408" not in out
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200


def test_tokenizing_wants_the_key_and_huge_prompts_are_refused_by_their_length(server):
    for path, body in (("/tokenize", {"prompt": "yes no"}), ("/detokenize", {"tokens": [5, 6]})):
        assert httpx.post(server.url + path, json=body, timeout=10).status_code == 401
        assert httpx.post(server.url + path, json=body, headers=AUTH, timeout=10).status_code == 200
    two = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(server.url + "/tokenize", json={"prompt": "yes"}, timeout=10,
                   headers=httpx.Headers([("Authorization", two["Authorization"])] * 2))
    assert (r.status_code, r.json()["error"]["message"]) == (400, "more than one Authorization header")
    # 4 MB: far past 128 tokens whatever they are, refused without being tokenized
    huge = "yes no maybe " * 300_000
    r = httpx.post(server.url + "/v1/completions", json={"prompt": huge, "max_tokens": 1}, headers=AUTH, timeout=30)
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "context_length_exceeded" and err["param"] == "prompt"
    assert err["message"].startswith(f"This model's maximum context length is 128 tokens. However, your prompt of "
                                     f"{len(huge)} characters is longer than that")

    async def main():  # /tokenize of the same text runs off the event loop: /health answers meanwhile
        async with httpx.AsyncClient(timeout=60) as http:
            order = []

            async def tok():
                r = await http.post(server.url + "/tokenize", json={"prompt": huge}, headers=AUTH)
                order.append(("tokenize", r.status_code))

            async def health():
                await asyncio.sleep(0.05)
                r = await http.get(server.url + "/health")
                order.append(("health", r.status_code))

            await asyncio.gather(tok(), health())
            return order

    assert asyncio.run(main()) == [("health", 200), ("tokenize", 200)]


def test_sampling_bounds_and_sequences_in_flight(server):
    url = server.url + "/v1/completions"
    for t in (2.5, 1e308):
        r = httpx.post(url, json={"prompt": [5, 6], "max_tokens": 2, "temperature": t}, headers=AUTH, timeout=10)
        assert (r.status_code, r.json()["error"]["message"]) == (400, f"temperature must be in [0, 2], got {t!r}")
    r = httpx.post(url, json={"prompt": [[5, 6]] * 3, "n": 3, "max_tokens": 2}, headers=AUTH, timeout=10)
    assert (r.status_code, r.json()["error"]["message"]) == (
        400, "at most 8 sequences in one request (prompts x n; --max-pending), got 3 x 3")
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "yes"}],
                                                              "n": 9, "max_tokens": 2}, headers=AUTH, timeout=10)
    assert (r.status_code, r.json()["error"]["param"]) == (400, "n")


def test_a_stalled_engine_fails_health_and_requests_time_out(tiny_tok):
    server = ServerProcess("--model", str(tiny_tok[1]), "--num-blocks", "64", "--max-model-len", "128",
                           "--api-key", KEY, "--request-timeout", "3", "--engine-stall-timeout", "2")
    try:
        stalled(server)
    finally:
        server.stop()


def stalled(server) -> None:
    pid = server.stats()["engine_pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        r = httpx.post(server.url + "/v1/completions", json={"prompt": [5, 6], "max_tokens": 4}, headers=AUTH,
                       timeout=30)
        assert r.status_code == 504 and r.json()["error"] == {
            "message": "request timed out after 3 s (--request-timeout)", "type": "timeout_error", "param": None,
            "code": "request_timeout"}
        assert time.monotonic() - t0 >= 3
        r = httpx.get(server.url + "/health", timeout=10)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_stalled"
    finally:
        os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 10
    while httpx.get(server.url + "/health", timeout=10).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    r = httpx.post(server.url + "/v1/completions", json={"prompt": [5, 6], "max_tokens": 4}, headers=AUTH, timeout=30)
    assert r.status_code == 200 and server.stats()["num_requests_in_flight"] == 0


def test_the_heartbeat_says_how_long_the_loop_is_in_its_step_and_health_sees_it():
    import threading
    from types import SimpleNamespace

    import msgspec
    import zmq
    from fastapi.testclient import TestClient

    from kairos.engine.proc import _heartbeats
    from kairos.server.app import build_app
    from kairos.server.config import ServerConfig
    from kairos.wire.messages import EngineOutput, Heartbeat

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind("inproc://heartbeats")
    stop, in_step = threading.Event(), [time.monotonic() - 40.0]  # (a step that began 40 s ago)
    beats = threading.Thread(target=_heartbeats, args=(ctx, "inproc://heartbeats", stop, in_step))
    beats.start()
    try:
        assert pull.poll(5000)
        beat = msgspec.msgpack.Decoder(EngineOutput).decode(pull.recv())
        assert isinstance(beat, Heartbeat) and 40.0 <= beat.step_s < 50.0
    finally:
        stop.set()
        beats.join(5)
        pull.close(0)
        ctx.term()
    # /health: a process heard from lately, whose loop has been in one step past the limit
    heard = {"silent": 0.5, "step": 0.0}
    client = SimpleNamespace(config=SimpleNamespace(model=SimpleNamespace(model="m")), dead=None,
                             ready=SimpleNamespace(max_model_len=64, vocab_size=300),
                             silent_for=lambda: heard["silent"], in_step_for=lambda: heard["step"])
    http = TestClient(build_app(client, None, "m", ServerConfig(engine_step_timeout=30)))
    assert http.get("/health").json() == {"status": "ok"}
    heard["step"] = 31.0
    r = http.get("/health")
    assert (r.status_code, r.json()["error"]) == (503, {
        "message": "engine stalled: its loop has been in one step for 31.0 s", "type": "server_error", "param": None,
        "code": "engine_stalled"})
