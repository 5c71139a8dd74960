"""Tool calls without a model parser: the constraint each tool_choice makes, and the tool_calls read back."""

from __future__ import annotations

import json

import pytest

from kairos.server.protocol import ChatCompletionRequest, conversation
from kairos.server.tool_parsers import Hermes, Llama3Json
from kairos.server.tools import ToolStream, message

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time"}}  # no parameters
ASK = [{"role": "user", "content": "hi"}]


def req(**kw) -> ChatCompletionRequest:
    return ChatCompletionRequest(messages=ASK, **kw)


def test_each_tool_choice_constrains_as_vllm():
    assert req(tools=[WEATHER], tool_choice="none").tool_plan() is None
    assert req().tool_plan() is None
    named = req(tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_weather"}}).tool_plan()
    assert named.name == "get_weather" and json.loads(named.structured.json) == WEATHER["function"]["parameters"]
    timed = req(tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_time"}}).tool_plan()
    assert json.loads(timed.structured.json) == {"type": "object", "properties": {}}
    required = req(tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False).tool_plan()
    assert required.name is None
    assert json.loads(required.structured.json) == {"type": "array", "minItems": 1, "maxItems": 1, "items": {"anyOf": [
        {"type": "object", "properties": {"name": {"type": "string", "enum": ["get_weather"]},
                                          "parameters": WEATHER["function"]["parameters"]},
         "required": ["name", "parameters"], "additionalProperties": False},
        {"type": "object", "properties": {"name": {"type": "string", "enum": ["get_time"]},
                                          "parameters": {"type": "object", "properties": {}}},
         "required": ["name", "parameters"], "additionalProperties": False}]}}
    assert "maxItems" not in json.loads(req(tools=[WEATHER], tool_choice="required").tool_plan().structured.json)
    # the tool constraint is the request's structured output
    r = req(tools=[WEATHER], tool_choice="required")
    assert r.sampling_params(16).structured == r.tool_plan().structured


@pytest.mark.parametrize("kw,message_,raised_by", [
    ({"tools": [WEATHER]}, 'tool_choice "auto" needs a parser of this model\'s tool-call format: start the server '
                           'with --tool-call-parser (hermes, llama3_json), or use "required", a named function, or '
                           '"none"', ["plan"]),  # (no constraint for "auto": it samples freely)
    ({"tool_choice": "required"}, 'tool_choice "required" needs tools', ["plan", "sampling"]),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice names function 'nope', which is not among the tools", ["plan", "sampling"]),
    ({"tools": [WEATHER, WEATHER], "tool_choice": "required"}, "tools must have distinct function names",
     ["plan", "sampling"]),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}},
     "tool_choice and response_format: give at most one way to constrain the output", ["sampling"]),
])
def test_tool_choice_errors(kw, message_, raised_by):
    r = req(**kw)
    errors = {}
    # the API server's checks: the tool plan (with its --tool-call-parser), then the sampling parameters
    for name, check in (("plan", r.tool_plan), ("sampling", lambda: r.sampling_params(16))):
        try:
            check()
        except ValueError as e:
            errors[name] = str(e)
    assert errors == {name: message_ for name in raised_by}


def test_calls_read_back_and_cut_outputs_stay_text():
    named = req(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}}).tool_plan()
    msg, why = message(named, '{"city": "Oslo"}', "stop")
    assert why == "stop" and msg["content"] is None and msg["role"] == "assistant"
    [c] = msg["tool_calls"]
    assert c["id"].startswith("call_") and c["type"] == "function"
    assert c["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    # cut by max_tokens: the call as far as it got, as its stream sends it
    msg, why = message(named, '{"ci', "length")
    assert why == "length" and msg["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"ci'}
    required = req(tools=[WEATHER, TIME], tool_choice="required").tool_plan()
    msg, why = message(required, '[{"name": "get_time", "parameters": {}}, {"name": "get_weather", '
                                 '"parameters": {"city": "Zürich"}}]', "stop")
    assert why == "tool_calls"
    assert [c["function"] for c in msg["tool_calls"]] == [{"name": "get_time", "arguments": "{}"},
                                                         {"name": "get_weather", "arguments": '{"city": "Zürich"}'}]
    assert message(required, '[{"name": "get_ti', "length") == ({"role": "assistant", "content": '[{"name": "get_ti'},
                                                                "length")
    assert message(None, "plain", "stop") == ({"role": "assistant", "content": "plain"}, "stop")


def test_streamed_calls():
    named = ToolStream(req(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}}
                           ).tool_plan())
    first, why = named.delta('{"ci', '{"ci', None)
    [c] = first["tool_calls"]
    assert why is None and c == {"index": 0, "id": named.id, "type": "function",
                                 "function": {"name": "get_weather", "arguments": '{"ci'}}
    assert named.delta('ty": "A"}', '{"city": "A"}', "stop") == (
        {"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "A"}'}}]}, "stop")
    held = ToolStream(req(tools=[TIME], tool_choice="required").tool_plan())
    assert held.delta('[{"name"', '[{"name"', None) == ({}, None)
    last, why = held.delta("}]", '[{"name": "get_time", "parameters": {}}]', "stop")
    assert why == "tool_calls" and [(c["index"], c["function"]) for c in last["tool_calls"]] == [
        (0, {"name": "get_time", "arguments": "{}"})]
    cut = ToolStream(req(tools=[TIME], tool_choice="required").tool_plan())
    assert cut.delta("[{", "[{", "length") == ({"content": "[{"}, "length")


def test_tool_messages_reach_the_template():
    msgs = ChatCompletionRequest(messages=ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "rain"}]).messages
    turns = conversation(msgs)
    assert turns[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]}
    assert turns[2] == {"role": "tool", "content": "rain", "tool_call_id": "call_1"}


CALL = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'


@pytest.mark.parametrize("text,content,calls", [
    ("no calls here", "no calls here", []),
    (f"<tool_call>\n{CALL}\n</tool_call>", None, [("get_weather", '{"city": "Oslo"}')]),
    (f"Let me look.\n<tool_call>{CALL}</tool_call>\n<tool_call>{{\"name\": \"get_time\", \"arguments\": {{}}}}</tool_call>",
     "Let me look.\n", [("get_weather", '{"city": "Oslo"}'), ("get_time", "{}")]),
    (f"<tool_call>{CALL}", None, [("get_weather", '{"city": "Oslo"}')]),  # cut before its closing tag
    ("<tool_call>not json</tool_call>", "<tool_call>not json</tool_call>", []),
    # what a client could not take stays text: a name that is not a string, arguments not an object
    ('<tool_call>{"name": 5, "arguments": {}}</tool_call>', '<tool_call>{"name": 5, "arguments": {}}</tool_call>', []),
    ('<tool_call>{"name": "f", "arguments": "x"}</tool_call>', '<tool_call>{"name": "f", "arguments": "x"}</tool_call>',
     []),
    ("<tool_call>" + "[" * 3000 + "]" * 3000 + "</tool_call>", "<tool_call>" + "[" * 3000 + "]" * 3000 + "</tool_call>",
     []),  # (json.loads recurses: RecursionError)
])
def test_hermes_parser(text, content, calls):
    assert Hermes().parse(text) == (content, calls)


@pytest.mark.parametrize("text,content,calls", [
    ("The weather is fine.", "The weather is fine.", []),
    ('{"name": "get_weather", "parameters": {"city": "Oslo"}}', None, [("get_weather", '{"city": "Oslo"}')]),
    ('<|python_tag|>{"name": "a", "parameters": {}}; {"name": "b", "parameters": {"x": 1}}', None,
     [("a", "{}"), ("b", '{"x": 1}')]),
    ('{"name": "a", "param', '{"name": "a", "param', []),
    ('{"name": ["a"], "parameters": {}}', '{"name": ["a"], "parameters": {}}', []),
    ("{" * 3000, "{" * 3000, []),
])
def test_llama3_json_parser(text, content, calls):
    assert Llama3Json().parse(text) == (content, calls)


def stream_through(ts: ToolStream, pieces: list[str], finish: str = "stop") -> tuple[str, list, str | None]:
    text, content, calls, why = "", "", [], None
    for k, piece in enumerate(pieces):
        text += piece
        delta, why = ts.delta(piece, text, finish if k == len(pieces) - 1 else None)
        content += delta.get("content", "")
        calls += delta.get("tool_calls", [])
    return content, calls, why


def test_auto_streams_text_and_holds_calls():
    hermes = req(tools=[WEATHER]).tool_plan("hermes")
    assert hermes.structured is None and isinstance(hermes.parser, Hermes)
    # text goes out as it comes, except what may begin a tag; the call goes out whole at the end
    content, calls, why = stream_through(ToolStream(hermes), ["Let me ", "look.<tool", "_call>", CALL, "</tool_call>"])
    assert (content, why) == ("Let me look.", "tool_calls")
    assert [(c["index"], c["function"]) for c in calls] == [(0, {"name": "get_weather", "arguments": '{"city": "Oslo"}'})]
    assert stream_through(ToolStream(hermes), ["a <tool", " b"]) == ("a <tool b", [], "stop")  # not a tag after all
    llama = req(tools=[WEATHER]).tool_plan("llama3_json")
    content, calls, why = stream_through(ToolStream(llama), ['  {"name": "get_weather", ', '"parameters": {"city": "Oslo"}}'])
    assert (content, why, calls[0]["function"]["arguments"]) == ("", "tool_calls", '{"city": "Oslo"}')
    assert stream_through(ToolStream(llama), ["Sunny ", "today."]) == ("Sunny today.", [], "stop")
    assert stream_through(ToolStream(llama), ["<", "b>bold", "</b>"])[0] == "<b>bold</b>"
    # (a "<" may begin <|python_tag|>: held until it is not one, then sent as it comes)
    ts = ToolStream(llama)
    assert [ts.delta(p, t, None)[0].get("content", "") for p, t in [("<", "<"), ("b>", "<b>"), ("x", "<b>x")]] == [
        "", "<b>", "x"]
    assert stream_through(ToolStream(llama), ['{"oops'], "length") == ('{"oops', [], "length")
    msg, why = message(hermes, f"<tool_call>{CALL}</tool_call>", "stop")
    assert why == "tool_calls" and msg["content"] is None and msg["tool_calls"][0]["function"]["name"] == "get_weather"
    assert message(hermes, "just text", "stop") == ({"role": "assistant", "content": "just text"}, "stop")


def test_auto_keeps_to_the_tools_and_to_parallel_tool_calls():
    two = '<tool_call>{"name": "get_weather", "arguments": {"city": "A"}}</tool_call>' \
          '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    both = req(tools=[WEATHER, TIME]).tool_plan("hermes")
    assert [c["function"]["name"] for c in message(both, two, "stop")[0]["tool_calls"]] == ["get_weather", "get_time"]
    first = req(tools=[WEATHER, TIME], parallel_tool_calls=False).tool_plan("hermes")
    assert [c["function"]["name"] for c in message(first, two, "stop")[0]["tool_calls"]] == ["get_weather"]
    other = req(tools=[WEATHER]).tool_plan("hermes")  # get_time is not among its tools: all text
    assert message(other, two, "stop") == ({"role": "assistant", "content": two}, "stop")
    with pytest.raises(ValueError, match="^tools must have distinct function names$"):
        req(tools=[WEATHER, WEATHER]).tool_plan("hermes")


def test_tool_fields_are_typed():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="messages.0.tool_calls"):
        ChatCompletionRequest(messages=[{"role": "assistant", "tool_calls": 5}])
    with pytest.raises(ValidationError, match="tools.0.function.parameters"):
        req(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}])
    deep = "[" * 3000 + "]" * 3000  # (arguments that are not JSON the template can take stay a string)
    msgs = ChatCompletionRequest(messages=[{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": deep}}]}]).messages
    assert conversation(msgs)[0]["tool_calls"] == [{"id": "c", "type": "function", "function": {"name": "f",
                                                                                               "arguments": deep}}]


TOOL_TEMPLATE = ("{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}{% endif %}"
                 "{% for m in messages %}|{{ m.role }}:{{ m.content }}{% for c in m.tool_calls or [] %}"
                 "CALL {{ c.id }} {{ c.function.name }} {{ c.function.arguments | tojson }}{% endfor %}"
                 "{% if m.tool_call_id %} FOR {{ m.tool_call_id }}{% endif %}{% endfor %}")


def test_tools_and_calls_reach_a_tool_aware_template():
    from types import SimpleNamespace

    from fastapi.testclient import TestClient
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    from kairos.server.app import build_app
    from kairos.server.config import ServerConfig

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["TOOLS: CALL FOR user assistant tool"], vocab_size=300, show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer)
    tok.chat_template = TOOL_TEMPLATE
    client = SimpleNamespace(config=SimpleNamespace(model=SimpleNamespace(model="m")), dead=None,
                             ready=SimpleNamespace(max_model_len=4096, vocab_size=300))  # (/tokenize needs no engine)
    http = TestClient(build_app(client, tok, "m", ServerConfig()))
    messages = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "rain"}]
    r = http.post("/tokenize", json={"messages": messages, "tools": [WEATHER, TIME], "add_generation_prompt": False})
    assert r.status_code == 200, r.text
    assert tok.decode(r.json()["tokens"]) == ('TOOLS:get_weather;get_time;|user:hi'
                                              '|assistant:CALL call_1 get_weather {"city": "Oslo"}|tool:rain FOR call_1')
