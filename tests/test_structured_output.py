"""Structured output: constrained greedy decoding equals a plain reference loop, every output is in
its language, a complete output ends without EOS, and bad grammars are refused before anything runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import llguidance
import llguidance.hf
import pytest
import torch

from kairos import LLM, SamplingParams, StructuredOutput
from kairos.grammar.structured import StructuredOutputs, grammar_of, prepare
from kairos.worker.sampler import unpack_bits, unpack_bits_on

from engine_helpers import assert_pool_whole, prompts_of

EOS = 2  # the tiny Llama's EOS (its config's default), the tokenizer's "</s>"
SCHEMA = {"type": "object", "properties": {"a": {"enum": ["yes", "no"]}, "b": {"type": "integer", "maximum": 99}},
          "required": ["a", "b"], "additionalProperties": False}
SPECS = {
    "json": StructuredOutput(json=json.dumps(SCHEMA)),
    "choice": StructuredOutput(choice=("yes", "no", "maybe")),
    "regex": StructuredOutput(regex=r"[0-9]{2}-[a-z]{1,3}"),
    "lark": StructuredOutput(grammar='start: "n" "=" NUM\nNUM: /[0-9]+/'),
    "gbnf": StructuredOutput(grammar='root ::= "x" [a-c] [a-c]'),
    # (llguidance's JSON takes any whitespace between tokens, and a random model loops on it)
    "compact": StructuredOutput(json=json.dumps(SCHEMA | {"x-guidance": {"whitespace_flexible": False}})),
}


def reference(model, tok, prompt: list[int], spec: StructuredOutput, max_tokens: int) -> tuple[list[int], str]:
    """Constrained greedy decoding the plain way: the whole sequence through HF each step, the
    matcher's byte mask (a path of llguidance's the engine does not use), argmax."""
    m = llguidance.LLMatcher(llguidance.hf.from_tokenizer(tok, n_vocab=320, eos_token=[EOS]), grammar_of(spec))
    ids, out = list(prompt), []
    while len(out) < max_tokens:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
        allowed = torch.frombuffer(bytearray(m.compute_logit_bias()), dtype=torch.uint8)[:320] > 0
        t = int(logits.masked_fill(~allowed, float("-inf")).argmax())
        assert m.consume_token(t)
        out.append(t)
        ids.append(t)
        if t == EOS or m.is_stopped():
            return out, "stop"
    return out, "length"


def accepts(tok, spec: StructuredOutput, tokens: list[int], whole: bool = True) -> bool:
    """Whether ``tokens`` are a whole sentence of the language (EOS allowed at its end), or when
    not ``whole``, the start of one."""
    m = llguidance.LLMatcher(llguidance.hf.from_tokenizer(tok, n_vocab=320, eos_token=[EOS]), grammar_of(spec))
    return all(m.consume_token(t) for t in tokens) and (not whole or m.is_accepting() or m.is_stopped())


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_constrained_greedy_equals_reference_in_a_mixed_batch(tiny_tok, async_scheduling):
    model, path, tok = tiny_tok
    llm = LLM(str(path), device="cpu", async_scheduling=async_scheduling, max_model_len=128)
    prompts = prompts_of([5, 11, 8, 3, 9, 6, 5], vocab=280)
    specs = [SPECS["json"], SPECS["choice"], None, SPECS["regex"], SPECS["lark"], SPECS["gbnf"], SPECS["compact"]]
    params = [SamplingParams(max_tokens=24, temperature=0.0, structured=s) for s in specs]
    outs = [r.outputs[0] for r in llm.generate(prompts, params)]
    free = llm.generate([prompts[2]], SamplingParams(max_tokens=24, temperature=0.0))[0].outputs[0]
    for prompt, spec, o in zip(prompts, specs, outs):
        if spec is None:  # an unconstrained row in the batch is left alone
            assert o.token_ids == free.token_ids
            continue
        assert (o.token_ids, o.finish_reason) == reference(model, tok, prompt, spec, 24), spec
        assert accepts(tok, spec, o.token_ids, whole=o.finish_reason == "stop")
    assert [o.finish_reason for o in outs] == ["length", "stop", "length", "stop", "length", "stop", "stop"]
    assert outs[6].finish_reason == "stop" and json.loads(outs[6].text).keys() == {"a", "b"}
    # the short languages end when complete, without an EOS
    assert outs[1].text in ("yes", "no", "maybe") and outs[1].token_ids[-1] != EOS
    assert re.fullmatch(r"[0-9]{2}-[a-z]{1,3}", outs[3].text) and re.fullmatch(r"x[a-c]{2}", outs[5].text)
    assert_pool_whole(llm.engine)


def test_sampled_siblings_stay_in_the_language(tiny_tok):
    _, path, tok = tiny_tok
    llm = LLM(str(path), device="cpu", max_model_len=128)
    spec = SPECS["regex"]
    out = llm.generate(prompts_of([7], vocab=280), SamplingParams(n=4, temperature=1.5, seed=5, max_tokens=24,
                                                                 structured=spec))[0]
    texts = [o.text for o in out.outputs]
    assert all(re.fullmatch(r"[0-9]{2}-[a-z]{1,3}", t) for t in texts), texts
    assert len(set(texts)) > 1  # the siblings' matchers are their own (deep copies at the fork)
    assert all(accepts(tok, spec, o.token_ids) for o in out.outputs)


def test_constrained_steps_launch_ahead_and_sample_once_the_last_token_is_known(tiny_tok):
    _, path, _ = tiny_tok
    prompts = prompts_of([5, 6, 9], vocab=280)
    params = [SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True),
              SamplingParams(max_tokens=10, temperature=0.0, structured=SPECS["lark"]),
              SamplingParams(n=2, max_tokens=16, temperature=1.2, seed=3, min_tokens=4, structured=SPECS["compact"])]
    results = []
    for on in (False, True):
        llm = LLM(str(path), device="cpu", async_scheduling=on, max_model_len=128)
        seen: list[tuple[int, bool]] = []  # per launch: steps in flight, whether a constrained request runs
        launch, sch = llm.engine.launch, llm.engine.scheduler

        def wrapper(launch=launch, sch=sch, seen=seen, llm=llm):
            seen.append((len(llm.engine._in_flight), any(s.params.structured for s in sch.running)))
            flight = launch()
            if seen[-1] == (1, True) and llm.engine._in_flight[-1] is flight:
                # launched ahead: the constrained rows' sampling waits for the step before
                assert flight.sample is None and flight.logits is not None
            return flight

        llm.engine.launch = wrapper
        results.append([(o.token_ids, o.finish_reason) for r in llm.generate(prompts, params) for o in r.outputs])
        assert ((1, True) in seen) == on
        assert_pool_whole(llm.engine)
    assert results[0] == results[1]


@pytest.mark.parametrize("spec,message", [
    (StructuredOutput(regex="[a-"), "structured output does not compile: at 1(8): invalid regex"),
    (StructuredOutput(json='{"type": "foo"}'), "structured output does not compile: Invalid type: foo"),
    (StructuredOutput(grammar="start: x"), 'structured output does not compile: at 1(8): unknown name: "x"'),
    (StructuredOutput(grammar='root ::= "a" | ('), "structured output grammar is neither Lark"),
])
def test_a_grammar_that_does_not_compile_is_refused(tiny_tok, spec, message):
    _, path, _ = tiny_tok
    llm = LLM(str(path), device="cpu", max_model_len=128)
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        prepare(spec)
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        llm.generate(prompts_of([5, 6]), [SamplingParams(), SamplingParams(structured=spec)])
    assert not llm.engine.has_unfinished()
    assert_pool_whole(llm.engine)


@pytest.mark.parametrize("kwargs,message", [
    ({}, "structured output takes exactly one of json, json_object, regex, choice, grammar; got none"),
    ({"regex": "a", "choice": ("a",)}, "structured output takes exactly one of json, json_object, regex, choice, "
                                        "grammar; got ['regex', 'choice']"),
    ({"json": "{bad"}, "structured output json is not valid JSON"),
    ({"json": "[1]"}, "structured output json must be a JSON schema (an object)"),
    ({"choice": ()}, "structured output choice must be a non-empty list of non-empty strings"),
    ({"choice": ("a", "")}, "structured output choice must be a non-empty list of non-empty strings"),
])
def test_structured_output_form(kwargs, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        StructuredOutput(**kwargs)


def test_a_model_without_a_tokenizer_ends_the_request_in_error(tiny_llama):
    # (found when the grammar is compiled for the tokenizer, after the request was taken)
    llm = LLM(str(tiny_llama[1]), device="cpu", max_model_len=64)
    out = llm.generate(prompts_of([5, 6]), [SamplingParams(structured=SPECS["choice"], n=2),
                                            SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)])
    assert [(o.token_ids, o.finish_reason, o.stop_reason) for o in out[0].outputs] == [
        ([], "error", "structured output needs a tokenizer; this model has none")] * 2
    assert (len(out[1].outputs[0].token_ids), out[1].outputs[0].finish_reason) == (3, "length")
    assert not llm.engine.has_unfinished()
    assert_pool_whole(llm.engine)


def test_both_bit_unpackings_agree_with_the_plain_rule():
    g = torch.Generator().manual_seed(0)
    bitmask = torch.randint(-(2**31), 2**31, (3, 4), generator=g, dtype=torch.int64).to(torch.int32)
    bitmask[0, 0] = -(2**31)  # bit 31 alone: token 31
    vocab = 100  # not a multiple of 32: the last word is cut
    plain = torch.tensor([[bool((int(bitmask[r, t // 32]) >> (t % 32)) & 1) for t in range(vocab)] for r in range(3)])
    assert plain[0, :32].tolist() == [False] * 31 + [True]
    assert torch.equal(unpack_bits(bitmask, vocab), plain)
    assert torch.equal(unpack_bits_on(bitmask, vocab), plain)  # (the GPU's path, run here on the CPU)


DEEP = """
import json, sys
from transformers import AutoTokenizer
from kairos import StructuredOutput
from kairos.grammar.structured import Compiler, StructuredOutputs, prepare
defs = {f"d{i}": {"type": "array", "items": {"$ref": f"#/$defs/d{i + 1}"}} for i in range(1500)}
defs["d1500"] = {"type": "integer"}
spec = StructuredOutput(json=json.dumps({"$defs": defs, "$ref": "#/$defs/d0"}))  # 94 KB
Compiler().submit(prepare, spec).result()  # the API server's check
m = StructuredOutputs(lambda: AutoTokenizer.from_pretrained(sys.argv[1]), 320, [2]).matcher(spec)  # the engine's
print(m.consume_token(AutoTokenizer.from_pretrained(sys.argv[1])("[", add_special_tokens=False).input_ids[0]))
"""


def test_a_deep_grammar_compiles_on_a_deep_stack(tiny_tok):
    # llguidance recurses per $ref: on a thread's usual 8 MiB stack this segfaults the process
    out = subprocess.run([sys.executable, "-c", DEEP, str(tiny_tok[1])], capture_output=True, text=True, timeout=120)
    assert (out.returncode, out.stdout.strip()) == (0, "True"), out.stderr[-2000:]


def test_min_tokens_gives_way_to_the_grammar(tiny_tok):
    _, path, tok = tiny_tok
    llm = LLM(str(path), device="cpu", max_model_len=128)
    x = tok("x", add_special_tokens=False).input_ids
    assert len(x) == 1
    # "x" is the only sentence; min_tokens would take it out (a stop token id): the grammar wins
    out = llm.generate(prompts_of([5], vocab=280), SamplingParams(max_tokens=8, min_tokens=1, stop_token_ids=(x[0],),
                                                                  structured=StructuredOutput(regex="x")))[0].outputs[0]
    assert (out.token_ids, out.text, out.finish_reason) == (x, "x", "stop")
    # where the grammar leaves a choice, min_tokens still holds EOS back: "ab?" may end after "a"
    a, b = (tok(c, add_special_tokens=False).input_ids[0] for c in "ab")
    kw = dict(max_tokens=8, temperature=0.0, logit_bias={EOS: 100.0, a: 50.0}, structured=StructuredOutput(regex="ab?"))
    free, held = (llm.generate(prompts_of([5], vocab=280), SamplingParams(min_tokens=m, **kw))[0].outputs[0]
                  for m in (0, 2))
    assert (free.token_ids, free.text) == ([a, EOS], "a")
    assert (held.token_ids, held.text, held.finish_reason) == ([a, b], "ab", "stop")


def test_a_grammar_past_the_parsers_limits_at_its_first_token_ends_in_error(tiny_tok):
    # it compiles and its first mask is fine; taking "{" (where 3,000 keys open) is past llguidance's rows
    schema = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(3000)}}
    llm = LLM(str(tiny_tok[1]), device="cpu", max_model_len=128)
    out = llm.generate(prompts_of([5], vocab=280), SamplingParams(max_tokens=8, temperature=0.0, structured=StructuredOutput(
        json=json.dumps(schema))))[0].outputs[0]
    assert out.finish_reason == "error"
    assert out.stop_reason.startswith("Parser Error: Current row has 12007 items; max is 2000")
    assert (out.token_ids, out.text) == ([], "")  # (the refused "{" is not emitted)
    assert_pool_whole(llm.engine)


# three-letter words, then one of 3,000 rules: past llguidance's rows once the words are out
_RULES = "\n".join(f'r{i}: "q" "{i}" "z"' for i in range(3000))
LATE_FAILURE = StructuredOutput(grammar='start: W "-" W "=" W "+" W "-" big\nW: /[a-z0-9]{3}/\nbig: '
                                + " | ".join(f"r{i}" for i in range(3000)) + "\n" + _RULES)


@pytest.mark.parametrize("async_scheduling", [False, True])
@pytest.mark.parametrize("prompt_len", [11, 16])
def test_a_grammar_failing_after_some_tokens_leaves_cache_and_pool_right(tiny_tok, async_scheduling, prompt_len):
    _, path, tok = tiny_tok
    llm = LLM(str(path), device="cpu", max_model_len=128, async_scheduling=async_scheduling, block_size=4)
    p = prompts_of([prompt_len], vocab=280)[0]
    failing, other = llm.generate([p, p], [SamplingParams(max_tokens=30, temperature=0.0, n=2, structured=LATE_FAILURE),
                                           SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)])
    for o in failing.outputs:  # both siblings: the words, then "error" where the refused token was dropped
        assert o.finish_reason == "error" and o.stop_reason.startswith("Parser Error")
        assert re.fullmatch(r"[a-z0-9]{3}-[a-z0-9]{3}=[a-z0-9]{3}\+[a-z0-9]{3}", o.text), o.text  # ("-" refused)
    assert other.outputs[0].finish_reason == "length"
    assert_pool_whole(llm.engine)
    # the blocks it cached hold what their tokens say: a prompt through its output reads them back
    q = p + failing.outputs[0].token_ids
    greedy = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    fresh = LLM(str(path), device="cpu", max_model_len=128, prefix_cache=False)
    assert llm.generate([q], greedy)[0].outputs[0].token_ids == fresh.generate([q], greedy)[0].outputs[0].token_ids
    assert_pool_whole(llm.engine)


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_requests_wait_for_their_grammar_while_the_engine_steps_on(tiny_tok, async_scheduling):
    import threading

    from kairos.wire.outputs import EngineRequest

    from engine_helpers import make_engine, run

    _, path, _ = tiny_tok
    engine = make_engine(path, max_model_len=128, async_scheduling=async_scheduling)
    gate, calls = threading.Event(), []
    compile_ = engine.structured._compile

    def gated(spec):  # (on the compiler thread)
        calls.append(spec)
        assert gate.wait(30)
        return compile_(spec)

    engine.structured._compile = gated
    p = prompts_of([7, 9, 5], vocab=280)
    free = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    regex = SamplingParams(max_tokens=12, temperature=0.0, structured=SPECS["regex"])
    engine.add_request(EngineRequest("free", p[0], free))
    engine.add_request(EngineRequest("b1", p[1], regex))
    engine.add_request(EngineRequest("b2", p[2], regex))  # (the same grammar: one compile for both)
    engine.add_request(EngineRequest("gone", p[2], SamplingParams(structured=SPECS["choice"])))
    got: dict[str, list[int]] = {}
    for _ in range(8):  # the free request runs to its end while the grammars compile
        for o in engine.step():
            got.setdefault(o.request_id, []).extend(o.new_token_ids)
    assert len(got["free"]) == 6 and "b1" not in got and engine.stats()["num_compiling"] == 3
    assert engine.only_compiling()
    flight = engine.launch()  # (nothing to run: no step may be launched behind it, or a loop spins)
    assert not engine.can_launch_ahead() and engine.finish(flight) == []
    assert [o.finish_reason for o in engine.abort("gone")] == ["abort"]  # (its compile goes on, unused)
    gate.set()
    done = run(engine, {})
    ref = run(make_engine(path, max_model_len=128), {0: [("b1", p[1], regex), ("b2", p[2], regex)]})
    assert {k: done[k] for k in [("b1", 0), ("b2", 0)]} == ref and ref[("b1", 0)][1] == "stop"
    # one compile for b1 and b2; the aborted request's, queued behind it, was dropped unrun
    assert [c.regex for c in calls] == [SPECS["regex"].regex] and not engine.stats()["num_compiling"]
    assert not engine.structured._compiling and SPECS["regex"] in engine.structured._cache
    assert_pool_whole(engine)


def test_a_compile_that_fails_with_the_tokenizer_is_a_refusal_before_any_stream(tiny_llama):
    """The API checks a grammar without the tokenizer; the engine compiles it with it while the
    request waits, and only then gives its verdict: a failure is a 400, streamed or not."""
    import httpx

    from server_helpers import ServerProcess

    srv = ServerProcess("--model", str(tiny_llama[1]), "--num-blocks", "64", "--max-model-len", "128")
    try:  # (a model without a tokenizer: token-id prompts serve, a grammar cannot be compiled)
        body = {"model": "default", "prompt": [5, 6, 7], "max_tokens": 4, "guided_regex": "[0-9]+"}
        expected = {"message": "structured output needs a tokenizer; this model has none",
                    "type": "invalid_request_error", "param": None, "code": None}
        for stream in (False, True):
            r = httpx.post(srv.url + "/v1/completions", json=body | {"stream": stream}, timeout=60)
            assert (r.status_code, r.json()) == (400, {"error": expected}), r.text
        r = httpx.post(srv.url + "/v1/completions", json=body | {"guided_regex": None, "max_tokens": 3}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
        # the context rule is the engine's, at the API too: one token past a full context is scored
        whole = body | {"guided_regex": None, "prompt": [5] * 128, "max_tokens": 1}
        r = httpx.post(srv.url + "/v1/completions", json=whole, timeout=60)
        assert r.status_code == 200 and r.json()["usage"] == {"prompt_tokens": 128, "completion_tokens": 1,
                                                              "total_tokens": 129} | r.json()["usage"]
        r = httpx.post(srv.url + "/v1/completions", json=whole | {"max_tokens": 2}, timeout=60)
        assert (r.status_code, r.json()) == (400, {"error": {
            "message": "This model's maximum context length is 128 tokens. However, you requested 130 tokens "
                       "(128 in the prompt, 2 in the completion). Please reduce the length.",
            "type": "invalid_request_error", "param": "max_tokens", "code": "context_length_exceeded"}})
        stats = srv.stats()
        assert (stats["num_compiling"], stats["num_requests_in_flight"], stats["kv_blocks_active"]) == (0, 0, 0)
    finally:
        srv.stop()


def test_a_compile_that_raises_ends_its_request_and_nothing_else(tiny_tok):
    _, path, _ = tiny_tok
    llm = LLM(str(path), device="cpu", max_model_len=128)

    def broken(spec):
        raise OSError("disk gone")

    llm.engine.structured._compile = broken
    outs = llm.generate(prompts_of([5, 6]), [SamplingParams(structured=SPECS["lark"], n=2),
                                            SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)])
    assert [(o.finish_reason, o.stop_reason) for o in outs[0].outputs] == [
        ("error", "structured output failed to compile: OSError('disk gone')")] * 2
    assert outs[1].outputs[0].finish_reason == "length" and not llm.engine.has_unfinished()
    assert not llm.engine.structured._compiling and not llm.engine.take_verdicts()  # (LLM took them)
    assert_pool_whole(llm.engine)


def test_the_grammar_cache_keeps_the_recent_within_its_count_and_characters(tiny_tok):
    tok = tiny_tok[2]
    cache = StructuredOutputs(lambda: tok, 320, [EOS], max_cached=3, max_cached_chars=20)
    a, b, c, d = (StructuredOutput(regex=r) for r in ("[a-c]{2}", "[0-9]{4}", "x+", "y*z"))  # 8, 8, 2, 3 characters
    for spec in (a, b):
        cache.matcher(spec)
    assert cache.cached() == [a, b]
    cache.matcher(a)  # (a hit: now the most recent)
    cache.matcher(c)
    assert cache.cached() == [b, a, c]  # 18 characters, 3 grammars
    cache.matcher(d)  # 4 grammars: the least recent, b, goes
    assert cache.cached() == [a, c, d]
    big = StructuredOutput(regex="[a-z]{1,3}-" * 3)  # 33 characters: alone past the budget, kept while newest
    cache.matcher(big)
    assert cache.cached() == [big]
    cache.matcher(c)
    assert cache.cached() == [c]  # (big went: 35 > 20)


def test_the_grammar_cache_keeps_within_the_memory_its_compiles_kept(tiny_tok, monkeypatch):
    from kairos.grammar import structured

    tok = tiny_tok[2]
    cache = StructuredOutputs(lambda: tok, 320, [EOS], max_cached_bytes=100 << 20)
    # each compile reads the resident memory before and after: these kept 60, 30 and 50 MB
    readings = iter([0, 60 << 20, 60 << 20, 90 << 20, 90 << 20, 140 << 20])
    monkeypatch.setattr(structured, "resident_bytes", lambda: next(readings))
    trims = []
    monkeypatch.setattr(structured, "release_memory", lambda: trims.append(1))
    a, b, c = (StructuredOutput(regex=r) for r in ("[a-c]{2}", "[0-9]{4}", "x+"))
    cache.matcher(a)
    cache.matcher(b)
    assert cache.cached() == [a, b] and not trims  # 90 MB
    cache.matcher(c)  # 140 MB: the least recent goes, and its memory goes back to the system
    assert cache.cached() == [b, c] and trims == [1]
    with pytest.raises(ValueError, match="unrolls to 1010000 elements"):
        cache.matcher(StructuredOutput(regex="((a{101}){100}){100}"))
