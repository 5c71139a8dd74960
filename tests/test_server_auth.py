"""--api-key / $KAIROS_API_KEY: the /v1 routes want 'Authorization: Bearer KEY' (401 in OpenAI's
format otherwise); health, metrics and version stay open."""

from __future__ import annotations

import httpx
import pytest

from kairos.bench.config import BenchConfig
from kairos.bench.main import BenchError, resolve_model
from kairos.bench.runner import Target, _body
from kairos.bench.workloads import SLO, RequestSpec
from kairos.cli import build_parser
from kairos.server.config import ServerConfig
from server_helpers import ServerProcess

KEY = "sk-kairos-test-0123"
MISSING = {"error": {"message": "You didn't provide an API key. Pass it as 'Authorization: Bearer YOUR_KEY'.",
                     "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}
WRONG = {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error", "param": None,
                   "code": "invalid_api_key"}}


def test_the_key_is_a_flag_checked_and_never_printed():
    args = build_parser().parse_args(["serve", "--api-key", KEY])
    assert args.api_key == KEY
    assert KEY not in repr(ServerConfig(api_key=KEY))
    with pytest.raises(ValueError, match="allowed_origins: 'ui.example' is not"):
        ServerConfig(allowed_origins=("ui.example",))
    assert build_parser().parse_args(["serve", "--allowed-origins", "*", "--allowed-origins", "https://a.b"]
                                     ).allowed_origins == ["*", "https://a.b"]
    for bad in ("", "two words", "tab\there", "ключ"):
        with pytest.raises(ValueError, match="api_key must be non-empty printable ASCII without spaces"):
            ServerConfig(api_key=bad)


def test_an_empty_key_in_the_environment_is_refused_not_an_open_server(monkeypatch):
    import subprocess
    import sys

    monkeypatch.setenv("KAIROS_API_KEY", "")
    r = subprocess.run([sys.executable, "-m", "kairos.cli", "serve", "--port", "1"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == ("kairos serve: api_key must be non-empty printable ASCII without spaces "
                                "(it travels in a header)")


def test_v1_routes_need_the_key_from_the_environment(tiny_llama, monkeypatch):
    monkeypatch.setenv("KAIROS_API_KEY", KEY)
    srv = ServerProcess("--model", str(tiny_llama[1]), "--num-blocks", "64", "--max-model-len", "128",
                        "--allowed-origins", "http://ui.example")
    try:
        url = srv.url
        body = {"model": "default", "prompt": [5, 6, 7], "max_tokens": 4, "temperature": 0}
        r = httpx.post(url + "/v1/completions", json=body, timeout=30)
        assert (r.status_code, r.json()) == (401, MISSING)
        r = httpx.post(url + "/v1/completions", json=body, headers={"Authorization": "Bearer sk-wrong"}, timeout=30)
        assert (r.status_code, r.json()) == (401, WRONG)
        r = httpx.get(url + "/v1/models", headers={"Authorization": KEY}, timeout=30)  # no "Bearer "
        assert (r.status_code, r.json()) == (401, WRONG)
        auth = {"Authorization": f"Bearer {KEY}"}
        r = httpx.post(url + "/v1/completions", json=body, headers=auth, timeout=30)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
        assert httpx.get(url + "/v1/models", headers=auth, timeout=30).status_code == 200
        r = httpx.post(url + "/v1/completions", json={**body, "prompt": [[5]] * 1025}, headers=auth, timeout=30)
        assert (r.status_code, r.json()["error"]["message"]) == (
            400, "at most 1024 sequences in one request (prompts x n; --max-pending), got 1025 x 1")
        # refused by the engine (n copies cannot fit in 63 blocks): a 400 before any stream starts
        r = httpx.post(url + "/v1/completions", json={**body, "n": 100, "stream": True}, headers=auth, timeout=30)
        assert (r.status_code, r.json()["error"]["message"]) == (
            400, "n=100 with a 3-token prompt does not fit in the KV cache")
        # a model directory without a tokenizer: text is a 400, not a crash (ids work, above)
        r = httpx.post(url + "/v1/completions", json={**body, "prompt": "hello"}, headers=auth, timeout=30)
        assert (r.status_code, r.json()["error"]["message"]) == (
            400, "this model has no tokenizer: send the prompt as token ids")
        r = httpx.post(url + "/tokenize", json={"prompt": "hello"}, timeout=30)  # (the tokenizer's routes want it too)
        assert r.status_code == 401
        r = httpx.post(url + "/tokenize", json={"prompt": "hello"}, headers=auth, timeout=30)
        assert (r.status_code, r.json()["error"]["param"]) == (400, "prompt")
        # CORS: a preflight needs no key; a 401 still tells the page's origin it may read it
        pre = httpx.options(url + "/v1/completions", timeout=30, headers={
            "Origin": "http://ui.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://ui.example"
        r = httpx.post(url + "/v1/completions", json=body, headers={"Origin": "http://ui.example"}, timeout=30)
        assert (r.status_code, r.headers["access-control-allow-origin"]) == (401, "http://ui.example")
        r = httpx.post(url + "/v1/completions", json=body, headers={"Origin": "http://evil.example", **auth}, timeout=30)
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
        for open_path in ("/health", "/version", "/metrics"):
            assert httpx.get(url + open_path, timeout=30).status_code == 200, open_path
        # kairos bench against it: refused without the key, by name; served with it
        with pytest.raises(BenchError, match="wants an API key: pass --api-key KEY or set \\$OPENAI_API_KEY"):
            resolve_model(BenchConfig(base_url=url))
        assert resolve_model(BenchConfig(base_url=url, api_key=KEY)) == tiny_llama[1].name
    finally:
        assert srv.stop() == 0


def test_the_load_generator_sends_the_key_beside_the_slo_headers():
    spec = RequestSpec(0, 0.0, "hi", 1, 4, SLO("i", ttft_ms=500))
    _, _, headers = _body(spec, Target("http://x", "m", "completions", True, api_key=KEY), [])
    assert headers == {"Authorization": f"Bearer {KEY}", "X-Kairos-TTFT-Ms": "500", "X-Kairos-SLO-Class": "i"}
    assert "Authorization" not in _body(spec, Target("http://x", "m", "completions", True), [])[2]
    # a class may carry the body's priority (vLLM's field; Kairos reads the same one), SLO or not
    ranked = RequestSpec(0, 0.0, "hi", 1, 4, SLO.parse("chat:ttft_ms=500,priority=-2"))
    for send_slo in (True, False):
        _, body, _ = _body(ranked, Target("http://x", "m", "completions", send_slo), [])
        assert body["priority"] == -2 and ("slo" in body) == send_slo
    assert "priority" not in _body(spec, Target("http://x", "m", "completions", True), [])[1]
    with pytest.raises(ValueError, match="SLO field priority must be an integer, got '1.5'"):
        SLO.parse("x:priority=1.5")
    assert KEY not in repr(BenchConfig(api_key=KEY))
