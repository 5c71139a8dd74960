"""A real `kairos serve` (default model) on 127.0.0.1, driven by the official openai client and httpx."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time

import httpx
import pytest

from server_helpers import ServerProcess, pid_alive

from conftest import needs_default_model

pytestmark = needs_default_model
openai = pytest.importorskip("openai")

MODEL = "SmolLM2-135M-Instruct"
ASK = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module", params=["sync", "async"])
def server(request):
    # async: the engine process launches step N+1 before it applies step N (a GPU's default; on
    # a CPU it only delays tokens, but every answer must stay the same)
    srv = ServerProcess("--kv-cache-memory", "512MiB", "--max-num-seqs", "32", "--max-model-len", "2048",
                        "--tool-call-parser", "hermes",
                        "--async-scheduling" if request.param == "async" else "--no-async-scheduling")
    yield srv
    engine_pid = srv.stats()["engine_pid"] if srv.proc.poll() is None else None
    assert srv.stop(signal.SIGTERM) == 0
    if engine_pid:
        deadline = time.monotonic() + 10
        while pid_alive(engine_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pid_alive(engine_pid), "engine process outlived the server"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)


def test_models_health_version(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert "version" in httpx.get(server.url + "/version").json()


def test_chat_and_stream_agree(client):
    full = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=40)
    assert full.choices[0].message.content == "The capital of France is Paris."
    assert full.choices[0].finish_reason == "stop"
    assert full.usage.completion_tokens == 8  # 7 text tokens + <|im_end|>
    chunks = list(client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=40, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_completion_n_stop_seed_logprobs(client):
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0,
                                  stop=[" France", "."], logprobs=2)
    c = r.choices[0]
    assert c.finish_reason == "stop" and "." not in c.text
    assert len(c.logprobs.tokens) == len(c.logprobs.token_logprobs) >= 1
    assert all(len(t) == 2 for t in c.logprobs.top_logprobs)
    kw = dict(model=MODEL, prompt="Once upon a time", max_tokens=12, temperature=0.9, n=3, seed=11,
              extra_body={"ignore_eos": True})
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    assert [x.text for x in a.choices] == [x.text for x in b.choices]
    assert sorted(x.index for x in a.choices) == [0, 1, 2]
    assert a.usage.completion_tokens == 36
    chat = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=3, temperature=0, logprobs=True, top_logprobs=2)
    lp = chat.choices[0].logprobs.content
    assert len(lp) == 3 and all(len(x.top_logprobs) == 2 and x.logprob <= 0 for x in lp)


def test_logit_bias_and_min_tokens(server, client):
    banana = httpx.post(server.url + "/tokenize", json={"prompt": " banana", "add_special_tokens": False}).json()["tokens"]
    assert len(banana) == 1
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=3, temperature=0,
                                  logit_bias={str(banana[0]): 100})
    assert r.choices[0].text == " banana banana banana"
    # the plain answer ends with <|im_end|> at its 8th token (test_chat_and_stream_agree); EOS is held back
    held = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=40,
                                          extra_body={"min_tokens": 12})
    assert held.choices[0].message.content.startswith("The capital of France is Paris.")
    assert held.usage.completion_tokens >= 12


def test_structured_output(server, client):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Invent a person."}], temperature=0, max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    person = json.loads(r.choices[0].message.content)
    assert set(person) == {"name", "age"} and isinstance(person["name"], str) and isinstance(person["age"], int)
    assert r.choices[0].finish_reason == "stop"
    pick = client.completions.create(model=MODEL, prompt="Is the sky blue? Answer:", max_tokens=5, temperature=0,
                                     extra_body={"structured_outputs": {"choice": [" yes", " no"]}})
    assert pick.choices[0].text in (" yes", " no") and pick.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model=MODEL, messages=ASK, temperature=0.7, seed=3, max_tokens=100,
                                                 stream=True, response_format={"type": "json_object"}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert isinstance(json.loads(streamed), dict) and chunks[-1].choices[0].finish_reason == "stop"
    # a schema past llguidance's parser limits at its first step: 400, streamed or not
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(3000)}}
    body = {"model": MODEL, "messages": ASK, "max_tokens": 8, "guided_json": wide}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith(
        "structured output failed while generating: Parser Error: Current row has 12007 items; max is 2000")
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body | {"stream": True}, timeout=60) as r:
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert r.status_code == 200 and json.loads(events[-1][6:])["error"]["message"].startswith(
        "structured output failed while generating: Parser Error")
    assert httpx.get(server.url + "/stats").json()["num_requests_in_flight"] == 0


def test_tool_calls(server, client):
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"],
        "additionalProperties": False}}}
    clock = {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"tz": {"enum": ["UTC", "CET"]}}, "required": ["tz"], "additionalProperties": False}}}
    ask = [{"role": "user", "content": "What's the weather in Paris?"}]
    kw = dict(model=MODEL, messages=ask, tools=[weather, clock], temperature=0, max_tokens=60)
    forced = {"type": "function", "function": {"name": "get_weather"}}
    r = client.chat.completions.create(**kw, tool_choice=forced)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "stop" and msg.content is None and len(msg.tool_calls) == 1
    call = msg.tool_calls[0]
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments)["city"], str)
    chunks = list(client.chat.completions.create(**kw, tool_choice=forced, stream=True))
    deltas = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert deltas[0].id.startswith("call_") and deltas[0].function.name == "get_weather"
    assert "".join(d.function.arguments for d in deltas) == call.function.arguments
    assert chunks[-1].choices[0].finish_reason == "stop"
    one = client.chat.completions.create(**kw, tool_choice="required", parallel_tool_calls=False)
    assert one.choices[0].finish_reason == "tool_calls" and len(one.choices[0].message.tool_calls) == 1
    assert one.choices[0].message.tool_calls[0].function.name in ("get_weather", "get_time")
    streamed = list(client.chat.completions.create(**kw, tool_choice="required", parallel_tool_calls=False, stream=True))
    last = streamed[-1].choices[0]
    assert last.finish_reason == "tool_calls"
    assert last.delta.tool_calls[0].function.arguments == one.choices[0].message.tool_calls[0].function.arguments
    # "auto" (the default with tools): the hermes parser finds a call in the text (made one here by a regex)
    said = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    auto = client.chat.completions.create(**kw, extra_body={"structured_outputs": {"regex": re.escape(said)}})
    assert auto.choices[0].finish_reason == "tool_calls" and auto.choices[0].message.content is None
    assert [(c.function.name, c.function.arguments) for c in auto.choices[0].message.tool_calls] == [
        ("get_weather", '{"city": "Paris"}')]
    streamed = list(client.chat.completions.create(**kw, stream=True, extra_body={"structured_outputs": {
        "regex": re.escape("Sure. " + said)}}))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "Sure. "
    assert streamed[-1].choices[0].delta.tool_calls[0].function.name == "get_weather"
    plain = client.chat.completions.create(**kw)  # this model answers in text: it stays text
    assert plain.choices[0].message.tool_calls is None and plain.choices[0].message.content
    # a call and its result go back to the model; "none" answers in text
    follow = ask + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    text = client.chat.completions.create(**kw | {"messages": follow}, tool_choice="none")
    assert text.choices[0].message.content and text.choices[0].message.tool_calls is None


def test_32_concurrent_streams_none_lost(server):
    async def one(http: httpx.AsyncClient, i: int):
        body = {"model": MODEL, "prompt": f"Count to {i}:", "max_tokens": 16, "temperature": 0, "ignore_eos": True,
                "stream": True, "stream_options": {"include_usage": True}}
        pieces, usage, done = [], None, False
        async with http.stream("POST", server.url + "/v1/completions", json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    continue
                chunk = json.loads(data)
                if chunk["choices"]:
                    pieces.append(chunk["choices"][0])
                else:
                    usage = chunk["usage"]
        return pieces, usage, done

    async def main():
        async with httpx.AsyncClient(timeout=120) as http:
            return await asyncio.gather(*(one(http, i) for i in range(32)))

    results = asyncio.run(main())
    assert len(results) == 32
    for pieces, usage, done in results:
        assert done and usage["completion_tokens"] == 16
        assert pieces[-1]["finish_reason"] == "length"
    stats = server.stats()
    assert stats["num_running"] == 0 and stats["kv_blocks_active"] == 0 and stats["num_requests_in_flight"] == 0


def test_disconnect_frees_blocks(server):
    body = {"model": MODEL, "prompt": "Tell me a long story.", "max_tokens": 1500, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
        # /stats gauges refresh every 0.25 s while the engine is busy: wait for one that sees the request
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not server.stats()["kv_blocks_active"]:
            time.sleep(0.05)
        assert server.stats()["kv_blocks_active"] > 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and server.stats()["kv_blocks_active"]:
        time.sleep(0.05)
    stats = server.stats()
    assert stats["kv_blocks_active"] == 0 and stats["num_running"] == 0
    metrics = httpx.get(server.url + "/metrics").text
    assert 'kairos_requests_total{model_name="SmolLM2-135M-Instruct",outcome="abort"} 1.0' in metrics
    assert "kairos_time_to_first_token_seconds_bucket" in metrics


def _err(server, body, path="/v1/chat/completions", raw=None):
    if raw is not None:
        return httpx.post(server.url + path, content=raw, headers={"content-type": "application/json"})
    # (json.dumps escapes non-ASCII, so a lone surrogate travels as the JSON escape a client would send)
    return httpx.post(server.url + path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize("body,status,expected", [
    ({"model": "gpt-9", "messages": ASK}, 404,
     {"message": f"The model `gpt-9` does not exist. Served: `{MODEL}`.", "type": "not_found_error",
      "param": "model", "code": "model_not_found"}),
    ({"model": MODEL, "messages": ASK, "temperature": -1}, 400,
     {"message": "temperature must be in [0, 2], got -1.0", "type": "invalid_request_error", "param": "temperature", "code": None}),
    ({"model": MODEL, "messages": ASK, "n": 0}, 400,
     {"message": "n must be in [1, 128], got 0", "type": "invalid_request_error", "param": "n", "code": None}),
    ({"model": MODEL, "messages": ASK, "n": 2**70}, 400, None),  # (int64: a validation error naming n)
    ({"model": MODEL, "messages": ASK, "n": 1_000_000}, 400,
     {"message": "n must be in [1, 128], got 1000000", "type": "invalid_request_error", "param": "n", "code": None}),
    ({"model": MODEL, "messages": ASK, "seed": 2**64}, 400, None),
    ({"model": MODEL, "messages": ASK, "max_tokens": 0}, 400,
     {"message": "max_tokens must be >= 1, got 0", "type": "invalid_request_error", "param": "max_tokens", "code": None}),
    ({"model": MODEL, "messages": ASK, "repetition_penalty": 0}, 400,
     {"message": "repetition_penalty must be > 0, got 0.0", "type": "invalid_request_error",
      "param": "repetition_penalty", "code": None}),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, 400,
     {"message": "messages.0.content: a text part's text must be a string", "type": "invalid_request_error",
      "param": "messages", "code": None}),
    ({"model": MODEL, "messages": [{"role": "user", "content": "\ud800"}]}, 400,
     {"message": "messages is not valid Unicode text (it holds a lone surrogate)", "type": "invalid_request_error",
      "param": "messages", "code": None}),
    ({"model": MODEL, "messages": ASK, "stop": ["\ud800"]}, 400,
     {"message": "stop is not valid Unicode text (it holds a lone surrogate)", "type": "invalid_request_error",
      "param": "stop", "code": None}),
    ({"model": "\ud800", "messages": ASK}, 404,
     {"message": f"The model `\\ud800` does not exist. Served: `{MODEL}`.", "type": "not_found_error",
      "param": "model", "code": "model_not_found"}),
    ({"model": MODEL, "messages": ASK, "logit_bias": {"49152": 5}}, 400,
     {"message": "logit_bias keys must be token ids in [0, 49152)", "type": "invalid_request_error",
      "param": "logit_bias", "code": None}),
    ({"model": MODEL, "messages": ASK, "logit_bias": {"-1": 5}}, 400,
     {"message": "logit_bias keys must be non-negative token ids, got ((-1, 5.0),)", "type": "invalid_request_error",
      "param": "logit_bias", "code": None}),
    ({"model": MODEL, "messages": ASK, "logit_bias": {"7": 100.5}}, 400, None),
    ({"model": MODEL, "messages": ASK, "max_tokens": 5, "min_tokens": 6}, 400,
     {"message": "min_tokens must be in [0, max_tokens], got 6", "type": "invalid_request_error",
      "param": "min_tokens", "code": None}),
    ({"model": MODEL, "messages": ASK, "response_format": {"type": "json_schema"}}, 400,
     {"message": 'response_format.json_schema.schema is required when type is "json_schema"',
      "type": "invalid_request_error", "param": "response_format.json_schema.schema", "code": None}),
    ({"model": MODEL, "messages": ASK, "response_format": {"type": "json_object"}, "guided_regex": "a"}, 400,
     {"message": "response_format and guided_regex: give at most one way to constrain the output",
      "type": "invalid_request_error", "param": "response_format", "code": None}),
    ({"model": MODEL, "messages": ASK, "structured_outputs": {"choice": []}}, 400,
     {"message": "structured_outputs: structured output choice must be a non-empty list of non-empty strings",
      "type": "invalid_request_error", "param": "structured_outputs", "code": None}),
    ({"model": MODEL, "messages": ASK, "guided_json": {"type": "foo"}}, 400,
     {"message": "guided_json: structured output does not compile: Invalid type: foo",
      "type": "invalid_request_error", "param": "guided_json", "code": None}),
    ({"model": MODEL, "messages": ASK, "guided_grammar": "a ::= b\nb ::= a"}, 400,
     {"message": "guided_grammar: structured output grammar is neither Lark (no start rule) nor valid GBNF: No 'root' "
                 "rule found", "type": "invalid_request_error", "param": "guided_grammar", "code": None}),
    ({"model": MODEL, "messages": ASK, "guided_json": "[" * 100_000}, 400,
     {"message": "guided_json: structured output json is not valid JSON: maximum recursion depth exceeded while "
                 "decoding a JSON array from a unicode string", "type": "invalid_request_error",
      "param": "guided_json", "code": None}),
    ({"model": MODEL, "messages": ASK, "guided_regex": "(" * 3000 + "a" + ")" * 3000}, 400, None),
    ({"model": MODEL, "messages": ASK, "guided_regex": "\ud800"}, 400,
     {"message": "guided_regex is not valid Unicode text (it holds a lone surrogate)",
      "type": "invalid_request_error", "param": "guided_regex", "code": None}),
    ({"model": MODEL, "messages": [{"role": "assistant", "tool_calls": 5}]}, 400, None),
    ({"model": MODEL, "messages": ASK, "max_tokens": 5000}, 400, None),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, 400, None),
    ({"model": MODEL, "messages": ASK, "max_tokens": "many"}, 400, None),
    ({"model": MODEL, "messages": ASK, "top_p": 2}, 400, None),
    ({"model": MODEL, "messages": []}, 400, None),
])
def test_bad_input_gets_openai_errors(server, body, status, expected):
    r = _err(server, body)
    assert r.status_code == status
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if expected:
        assert err == expected
    if body.get("max_tokens") == 5000:
        assert err["code"] == "context_length_exceeded" and "maximum context length is 2048" in err["message"]
    if "guided_regex" in body and len(body["guided_regex"]) > 100:  # (the grammar is not echoed whole)
        assert err["message"].startswith('guided_regex: structured output does not compile: at 1(8): invalid regex "((')
        assert err["message"].endswith("more characters)") and len(err["message"]) < 400
    if body.get("messages") and body["messages"][0]["role"] == "wizard":
        assert err["param"] == "messages.0.role"


def test_malformed_json_empty_prompt_and_huge_body(server):
    r = _err(server, None, raw=b'{"model": "x", "messages": [')
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("request body is not valid JSON")
    r = _err(server, {"model": MODEL, "prompt": ""}, path="/v1/completions")
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = _err(server, None, raw=b"x" * (9 << 20))
    assert r.status_code == 413
    assert r.json()["error"]["message"] == f"request body of {9 << 20} bytes exceeds the limit of {8 << 20}"
    chunks = (b"x" * (1 << 20) for _ in range(9))  # no Content-Length: chunked, counted as it is read
    r = httpx.post(server.url + "/v1/chat/completions", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"] == {"message": f"request body of over {8 << 20} bytes exceeds the limit of {8 << 20}",
                                 "type": "invalid_request_error", "param": None, "code": None}
    assert server.stats()["kv_blocks_active"] == 0


def test_slo_body_headers_usage_extension_and_429(server, client):
    r = httpx.post(server.url + "/v1/chat/completions", json={
        "model": MODEL, "messages": ASK, "max_tokens": 8, "temperature": 0,
        "slo": {"ttft_ms": 60000, "deadline_ms": 120000, "class": "interactive"}, "priority": 3})
    assert r.status_code == 200
    k = r.json()["usage"]["kairos"]
    assert k["slo_class"] == "interactive" and k["slo_met"] is True and k["ttft_met"] is True
    assert k["deadline_met"] is True and k["tpot_met"] is None and 0 < k["ttft_ms"] <= k["e2e_ms"]
    # what admission control predicted for it (and admitted it on)
    assert 0 < k["predicted_ttft_ms"] < k["predicted_e2e_ms"] <= 120000 and k["predicted_tpot_ms"] > 0
    r = httpx.post(server.url + "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 4},
                   headers={"X-Kairos-TTFT-Ms": "60000", "X-Kairos-Priority": "2"})
    assert r.status_code == 200 and r.json()["usage"]["kairos"]["ttft_met"] is True
    r = httpx.post(server.url + "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 4,
                                                          "slo": {"ttft_ms": 0.001}})
    assert r.status_code == 429
    err = r.json()["error"]
    assert err["code"] == "slo_infeasible" and err["type"] == "slo_infeasible_error" and err["param"] == "slo"
    assert err["message"].startswith("SLO cannot be met: predicted TTFT")
    r = httpx.post(server.url + "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 4,
                                                          "slo": {"ttft_ms": 0.001, "on_miss": "best_effort"}})
    assert r.status_code == 200 and r.json()["usage"]["kairos"]["ttft_met"] is False
    assert r.json()["usage"]["kairos"]["predicted_ttft_ms"] is None  # best-effort: no prediction was promised
    r = httpx.post(server.url + "/v1/completions", json={"model": MODEL, "prompt": "Hi"}, headers={"X-Kairos-TTFT-Ms": "soon"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "slo"
    metrics = httpx.get(server.url + "/metrics").text
    assert 'kairos_slo_requests_total{model_name="SmolLM2-135M-Instruct",outcome="refused",slo_class="default"} 1.0' in metrics
    assert 'kairos_slo_requests_total{model_name="SmolLM2-135M-Instruct",outcome="met",slo_class="interactive"} 1.0' in metrics
    assert "cost_prefill_s_per_token" in server.stats()


def test_engine_crash_ends_streams_with_503_and_exits_nonzero():
    # (no restarts left: a restart is tests/test_engine_restart.py's)
    srv = ServerProcess("--kv-cache-memory", "256MiB", "--engine-restarts", "0")
    try:
        body = {"model": MODEL, "prompt": "Tell me a long story.", "max_tokens": 1500, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            next(lines)
            os.kill(srv.stats()["engine_pid"], signal.SIGKILL)
            rest = [line for line in lines if line.startswith("data: ")]
        error = json.loads(rest[-1][6:])["error"]
        assert error["type"] == "server_error" and error["code"] == "engine_dead"
        assert srv.proc.wait(15) == 1
    finally:
        srv.stop()


def test_continue_final_message_template_kwargs_and_truncation(server):
    from kairos.loader import load_tokenizer, resolve_model_path

    tok = load_tokenizer(resolve_model_path("default"))
    partial = ASK + [{"role": "assistant", "content": "The answer is"}]
    open_turn = tok.apply_chat_template(partial, tokenize=False, continue_final_message=True)
    assert open_turn.endswith("The answer is")  # (no end of turn: the model goes on from there)
    body = {"messages": partial, "add_generation_prompt": False, "continue_final_message": True,
            "chat_template_kwargs": {"unused_by_this_template": 1}}
    assert httpx.post(server.url + "/tokenize", json=body).json()["tokens"] == tok(open_turn, add_special_tokens=False
                                                                                 ).input_ids
    chat = httpx.post(server.url + "/v1/chat/completions", json={**body, "max_tokens": 4, "temperature": 0}).json()
    ids = tok(open_turn, add_special_tokens=False).input_ids
    done = httpx.post(server.url + "/v1/completions", json={"prompt": ids, "max_tokens": 4, "temperature": 0}).json()
    assert chat["choices"][0]["message"]["content"] == done["choices"][0]["text"]
    assert chat["usage"]["prompt_tokens"] == len(ids)
    for extra, err in [
        ({"continue_final_message": True}, {"message": "continue_final_message and add_generation_prompt cannot both "
                                            "be true", "param": "continue_final_message"}),
        ({"chat_template_kwargs": {"tokenize": True}}, {"message": "chat_template_kwargs must not set tokenize",
                                                        "param": "chat_template_kwargs"}),
    ]:
        for path in ("/tokenize", "/v1/chat/completions"):
            r = httpx.post(server.url + path, json={"messages": ASK, **extra})
            assert (r.status_code, r.json()) == (400, {"error": {**err, "type": "invalid_request_error", "code": None}})
    # truncate_prompt_tokens keeps the prompt's last N tokens (echo shows what ran)
    prompt = tok("one two three four five six seven eight").input_ids
    cut = httpx.post(server.url + "/v1/completions", json={"prompt": prompt, "max_tokens": 3, "temperature": 0,
                                                          "truncate_prompt_tokens": 4, "echo": True}).json()
    tail = httpx.post(server.url + "/v1/completions", json={"prompt": prompt[-4:], "max_tokens": 3, "temperature": 0,
                                                           "echo": True}).json()
    assert cut["choices"][0]["text"] == tail["choices"][0]["text"] and cut["usage"]["prompt_tokens"] == 4
    assert tail["choices"][0]["text"].startswith(tok.decode(prompt[-4:]))
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": ASK, "max_tokens": 2,
                                                              "truncate_prompt_tokens": 3})
    assert r.json()["usage"]["prompt_tokens"] == 3
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "a", "truncate_prompt_tokens": 0})
    assert (r.status_code, r.json()["error"]["message"]) == (
        400, "truncate_prompt_tokens must be -1 (the model's context) or >= 1, got 0")
    whole = httpx.post(server.url + "/v1/completions", json={"prompt": "one two", "max_tokens": 1, "echo": True,
                                                            "truncate_prompt_tokens": -1}).json()
    assert whole["choices"][0]["text"].startswith("one two")  # (-1: the context; nothing cut, the text as sent)


def test_tokenize_and_detokenize_as_vllm(server):
    from kairos.loader import load_tokenizer, resolve_model_path

    tok = load_tokenizer(resolve_model_path("default"))
    text = "Hello world, déjà vu"
    r = httpx.post(server.url + "/tokenize", json={"model": MODEL, "prompt": text, "return_token_strs": True})
    ids = tok(text).input_ids
    assert r.status_code == 200
    assert r.json() == {"count": len(ids), "max_model_len": 2048, "tokens": ids,
                        "token_strs": tok.convert_ids_to_tokens(ids)}
    chat = tok(tok.apply_chat_template(ASK, tokenize=False, add_generation_prompt=True), add_special_tokens=False)
    r = httpx.post(server.url + "/tokenize", json={"messages": ASK})
    assert r.json() == {"count": len(chat.input_ids), "max_model_len": 2048, "tokens": chat.input_ids,
                        "token_strs": None}
    assert httpx.post(server.url + "/detokenize", json={"tokens": ids}).json() == {"prompt": text}
    assert httpx.post(server.url + "/detokenize", json={"tokens": []}).json() == {"prompt": ""}
    for path, body, err in [
        ("/tokenize", {"prompt": "a", "messages": ASK},
         {"message": "give exactly one of prompt and messages", "type": "invalid_request_error", "param": "prompt",
          "code": None}),
        ("/tokenize", {}, {"message": "give exactly one of prompt and messages", "type": "invalid_request_error",
                           "param": "prompt", "code": None}),
        ("/detokenize", {"tokens": [1, 49152]},
         {"message": "token ids must be in [0, 49152)", "type": "invalid_request_error", "param": "tokens",
          "code": None}),
        ("/tokenize", {"model": "gpt-9", "prompt": "a"},
         {"message": f"The model `gpt-9` does not exist. Served: `{MODEL}`.", "type": "not_found_error",
          "param": "model", "code": "model_not_found"}),
    ]:
        r = httpx.post(server.url + path, json=body)
        assert (r.status_code, r.json()["error"]) == (404 if "gpt-9" in str(body) else 400, err), body


def test_a_client_that_leaves_before_a_whole_answer_is_aborted(server):
    """Not streamed: 1800 tokens would take this CPU many seconds; the client gives up after 0.5."""
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 1800, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json=body, timeout=httpx.Timeout(30, read=0.5))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (server.stats()["num_running"] or server.stats()["kv_blocks_active"]):
        time.sleep(0.05)
    stats = server.stats()
    assert stats["num_running"] == 0 and stats["kv_blocks_active"] == 0 and stats["num_requests_in_flight"] == 0


def sse_choices(url: str, body: dict) -> list[dict]:
    chunks = []
    with httpx.stream("POST", url, json={**body, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    return chunks


def test_echo_puts_the_prompt_and_its_logprobs_ahead_streamed_or_not(server):
    from kairos.loader import load_tokenizer, resolve_model_path

    tok = load_tokenizer(resolve_model_path("default"))
    prompt_ids = tok("hello there").input_ids
    body = {"model": MODEL, "prompt": "hello there", "echo": True, "max_tokens": 3, "temperature": 0, "logprobs": 1,
            "prompt_logprobs": 1}
    choice = httpx.post(server.url + "/v1/completions", json=body).json()["choices"][0]
    whole, lps = choice["text"], choice["logprobs"]
    assert whole.startswith("hello there") and len(whole) > len("hello there")
    # the prompt's tokens first (the first with no logprob), then the output's, each at its offset
    # in the text (the sum of its predecessors' lengths, as vLLM's)
    k = len(prompt_ids)
    assert len(lps["tokens"]) == k + 3 and "".join(lps["tokens"]) == whole
    assert lps["tokens"][:k] == [tok.decode([t]) for t in prompt_ids]
    assert lps["token_logprobs"][0] is None and lps["top_logprobs"][0] is None
    assert all(x < 0 for x in lps["token_logprobs"][1:]) and all(len(t) == 1 for t in lps["top_logprobs"][1:])
    assert lps["text_offset"] == [len("".join(lps["tokens"][:j])) for j in range(k + 3)]
    # vLLM's form of the same numbers: {token id: {logprob, rank, decoded_token}}, the token's own first
    plp = choice["prompt_logprobs"]
    assert plp[0] is None and len(plp) == k
    for j in range(1, k):
        own = plp[j][str(prompt_ids[j])]
        assert own == {"logprob": lps["token_logprobs"][j], "rank": own["rank"], "decoded_token": lps["tokens"][j]}
        assert own["rank"] >= 1 and len(plp[j]) == (1 if own["rank"] == 1 else 2)
    chunks = [c["choices"][0] for c in sse_choices(server.url + "/v1/completions", body)]
    assert "".join(c["text"] for c in chunks) == whole and chunks[0]["text"].startswith("hello there")
    assert [t for c in chunks for t in c["logprobs"]["tokens"]] == lps["tokens"]
    assert [t for c in chunks for t in c["logprobs"]["text_offset"]] == lps["text_offset"]
    assert chunks[0]["prompt_logprobs"] == plp and all("prompt_logprobs" not in c for c in chunks[1:])
    by_ids = httpx.post(server.url + "/v1/completions", json={**body, "prompt": prompt_ids}).json()["choices"][0]["text"]
    assert by_ids == whole


def test_echo_with_max_tokens_0_gives_the_prompt_and_its_logprobs_only(server):
    body = {"model": MODEL, "prompt": "The capital of France is", "echo": True, "max_tokens": 0, "logprobs": 0}
    r = httpx.post(server.url + "/v1/completions", json=body).json()
    (choice,) = r["choices"]
    assert choice["text"] == "The capital of France is"
    assert "".join(choice["logprobs"]["tokens"]) == choice["text"]
    assert len(choice["logprobs"]["tokens"]) == r["usage"]["prompt_tokens"]
    assert choice["logprobs"]["token_logprobs"][0] is None and r["usage"]["completion_tokens"] == 0
    (chunk,) = [c for c in sse_choices(server.url + "/v1/completions", body) if c["choices"]]
    assert (chunk["choices"][0]["text"], chunk["choices"][0]["logprobs"]) == (choice["text"], choice["logprobs"])
    # without echo, max_tokens 0 is refused
    bad = httpx.post(server.url + "/v1/completions", json={**body, "echo": False})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_tokens"
    # a prompt of the whole context (2048 tokens) is scored; one more is refused
    ids = [(7 * i) % 4000 + 100 for i in range(2048)]
    whole = httpx.post(server.url + "/v1/completions", json={**body, "prompt": ids, "logprobs": None}, timeout=120).json()
    assert whole["usage"] == {**whole["usage"], "prompt_tokens": 2048, "completion_tokens": 0}
    over = httpx.post(server.url + "/v1/completions", json={**body, "prompt": ids + [100]})
    assert over.status_code == 400 and "you requested 2049 tokens (2049 in the prompt, 0 in" in over.json()["error"]["message"]


def test_continuous_usage_stats_give_the_usage_so_far_in_every_chunk(server):
    body = {"model": MODEL, "prompt": ["Count to 3:", "Name a color:"], "max_tokens": 5, "temperature": 0,
            "ignore_eos": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    chunks = sse_choices(server.url + "/v1/completions", body)
    *steps, last = chunks
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 10
    prompt = last["usage"]["prompt_tokens"]
    done = [c["usage"]["completion_tokens"] for c in steps]
    assert all(c["usage"]["prompt_tokens"] == prompt and c["usage"]["total_tokens"] == prompt + d
               for c, d in zip(steps, done))
    assert done == sorted(done) and done[-1] == 10  # (a stream behind its tokens sends them in one chunk)
    assert all("usage" not in c for c in sse_choices(server.url + "/v1/completions",
                                                     {**body, "stream_options": {"include_usage": True}})[:-1])


def test_chat_prompt_logprobs(server):
    body = {"model": MODEL, "messages": ASK, "max_tokens": 2, "temperature": 0, "prompt_logprobs": 0}
    r = httpx.post(server.url + "/v1/chat/completions", json=body).json()
    plp = r["prompt_logprobs"]
    assert plp[0] is None and len(plp) == r["usage"]["prompt_tokens"]
    assert all(len(e) == 1 and next(iter(e.values()))["logprob"] <= 0 for e in plp[1:])
    chunks = sse_choices(server.url + "/v1/chat/completions", body)
    assert chunks[0]["prompt_logprobs"] == plp and all("prompt_logprobs" not in c for c in chunks[1:])
    bad = httpx.post(server.url + "/v1/chat/completions", json={**body, "prompt_logprobs": 21})
    assert (bad.status_code, bad.json()) == (400, {"error": {
        "message": "prompt_logprobs must be in [0, 20], got 21", "type": "invalid_request_error",
        "param": "prompt_logprobs", "code": None}})
