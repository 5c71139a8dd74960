"""kairos bench: metric math on hand-made timelines, input parsing, and a short real run."""

from __future__ import annotations

import json
import random

import pytest

from kairos.bench.config import BenchConfig
from kairos.bench.metrics import capacity, percentile, summarize
from kairos.bench.runner import Record
from kairos.bench.workloads import SLO, Length, arrival_times, build_workload, load_trace
from server_helpers import ServerProcess

from conftest import needs_default_model


def rec(i, sent, first, end, n_out, cls="default", outcome="ok", times=None):
    return Record(i, cls, sent, sent_s=sent, first_token_s=first, end_s=end, output_tokens=n_out,
                  prompt_tokens=10, outcome=outcome, token_times=times or [])


def test_metric_math_by_hand():
    records = [
        # TTFT 0.5, TPOT (2.5 - 0.5) / 4 = 0.5, E2E 2.5, ITLs 0.5 x4
        rec(0, 0.0, 0.5, 2.5, 5, "interactive", times=[0.5, 1.0, 1.5, 2.0, 2.5]),
        # TTFT 2.0, TPOT (4.0 - 3.0) / 1 = 1.0, E2E 3.0
        rec(1, 1.0, 3.0, 4.0, 2, "interactive", times=[3.0, 4.0]),
        rec(2, 1.5, None, 1.6, 0, "batch", outcome="refused"),  # never a latency sample
        rec(3, 2.0, 2.2, 6.0, 4, "batch", times=[2.2, 6.0]),  # E2E 4.0
    ]
    slos = {"interactive": SLO("interactive", ttft_ms=1000, tpot_ms=600), "batch": SLO("batch", deadline_ms=5000)}
    s = summarize(records, slos)
    assert s["duration_s"] == 6.0
    assert (s["completed"], s["refused"], s["failed"]) == (3, 1, 0)
    assert s["ttft_s"]["mean"] == pytest.approx((0.5 + 2.0 + 0.2) / 3)
    assert s["ttft_s"]["p50"] == pytest.approx(0.5)
    assert s["tpot_s"]["mean"] == pytest.approx((0.5 + 1.0 + (6.0 - 2.2) / 3) / 3)
    assert s["e2e_s"]["p50"] == pytest.approx(3.0)
    assert s["itl_s"]["mean"] == pytest.approx((0.5 * 4 + 1.0 + 3.8) / 6)
    # met: request 0 only (1 misses TTFT; 2 was refused; 3 meets its 5 s deadline) -> and 3
    assert s["classes"]["interactive"]["met"] == 1 and s["classes"]["batch"]["met"] == 1
    assert s["slo_attainment"] == pytest.approx(2 / 4)
    assert s["goodput_rps"] == pytest.approx(2 / 6.0)
    assert s["goodput_tokens_per_s"] == pytest.approx((5 + 4) / 6.0)
    assert s["output_throughput"] == pytest.approx(11 / 6.0)


def test_percentile_and_capacity():
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 90) == pytest.approx(4.6)
    assert percentile([], 50) is None
    sweep = [(1.0, {"slo_attainment": 1.0}), (2.0, {"slo_attainment": 0.95}), (4.0, {"slo_attainment": 0.5})]
    assert capacity(sweep, 0.9) == 2.0 and capacity(sweep, 0.99) == 1.0 and capacity(sweep[2:], 0.9) is None


def test_arrivals_and_parsing():
    rng = random.Random(0)
    assert arrival_times(3, 2.0, "constant", rng) == [0.0, 0.5, 1.0]
    assert arrival_times(3, float("inf"), "poisson", rng) == [0.0, 0.0, 0.0]
    gaps = arrival_times(2000, 4.0, "poisson", rng)
    assert gaps[-1] / 1999 == pytest.approx(0.25, rel=0.1)
    assert Length.parse("uniform:5:9").sample(rng) in range(5, 10)
    assert SLO.parse("chat:ttft_ms=1000,tpot_ms=150") == SLO("chat", 1000.0, 150.0, None)
    with pytest.raises(ValueError, match="unknown SLO field 'ttft'"):
        SLO.parse("x:ttft=3")
    with pytest.raises(ValueError, match="bad length"):
        BenchConfig(input_len="lots")
    with pytest.raises(ValueError, match="sweep"):
        BenchConfig(sweep="1,fast")
    with pytest.raises(ValueError, match="^extra_body must be a JSON object$"):
        BenchConfig(extra_body="[1]")
    with pytest.raises(ValueError, match="^extra_body is not JSON"):
        BenchConfig(extra_body="{nope")


def test_extra_body_joins_every_request_but_not_its_stream_or_prompt():
    from kairos.bench.runner import Target, _body
    from kairos.bench.workloads import RequestSpec

    extra = BenchConfig(extra_body='{"response_format": {"type": "json_object"}, "temperature": 0.7, '
                                   '"stream": false, "messages": []}').extra()
    spec = RequestSpec(index=0, send_at=0.0, prompt="hi", prompt_tokens=1, max_tokens=8, slo=SLO())
    path, body, _ = _body(spec, Target("http://x", "m", "chat", False, extra_body=extra), [])
    assert path == "/v1/chat/completions"
    assert body == {"model": "m", "max_tokens": 8, "temperature": 0.7, "ignore_eos": True,
                    "response_format": {"type": "json_object"}, "stream": True,
                    "stream_options": {"include_usage": True}, "messages": [{"role": "user", "content": "hi"}]}


def test_trace_bad_line_names_it(tmp_path, default_tokenizer):
    path = tmp_path / "trace.jsonl"
    path.write_text('{"timestamp": 1.0, "input_length": 5, "output_length": 3}\n{"timestamp": 2.0}\n')
    with pytest.raises(ValueError, match=r"trace.jsonl:2: bad trace line"):
        load_trace(path, default_tokenizer, 0, [SLO()])
    path.write_text('{"timestamp": 3.0, "input_length": 5, "output_length": 3}\n{"timestamp": 1.5, "input_length": 7, "output_length": 2}\n')
    specs = load_trace(path, default_tokenizer, 0, [SLO()])
    assert [(s.send_at, s.prompt_tokens, s.max_tokens) for s in specs] == [(0.0, 7, 2), (1.5, 5, 3)]


@needs_default_model
def test_real_run_counts_refusals_and_writes_outputs(tmp_path):
    from kairos.bench.main import BenchError, run_bench

    srv = ServerProcess("--max-pending", "2", "--kv-cache-memory", "256MiB")
    try:
        from rich.console import Console

        cfg = BenchConfig(base_url=srv.url, num_requests=8, rate=float("inf"), input_len="16", output_len="8",
                          slo=("fast:ttft_ms=60000",), out=str(tmp_path / "run"), api_key="sk-secret-42",
                          num_warmups=2)
        console = Console(record=True, width=200)
        result = run_bench(cfg, console)
        assert "warm-up: 2 of 2 requests answered" in console.export_text()
        s = result["runs"][0]["summary"]
        assert s["requests"] == 8 and s["completed"] + s["refused"] == 8  # (the warm-up's are not in it)
        assert s["refused"] >= 1 and s["completed"] >= 2  # max-pending 2: a burst of 8 overflows
        records = result["runs"][0]["records"]
        assert all(r["output_tokens"] == 8 for r in records if r["outcome"] == "ok")
        assert all(r["first_token_s"] is None and r["status"] == 503 for r in records if r["outcome"] == "refused")
        written = (tmp_path / "run.json").read_text()
        assert json.loads(written)["runs"][0]["summary"]["refused"] == s["refused"]
        assert "sk-secret-42" not in written and json.loads(written)["config"]["api_key"] == "(sent)"  # (shared files)
        assert (tmp_path / "run_latency_cdf.png").stat().st_size > 1000
        with pytest.raises(BenchError, match="model 'gpt-9' is not served"):
            run_bench(BenchConfig(base_url=srv.url, model="gpt-9", out=str(tmp_path / "x")))
    finally:
        srv.stop()


def sse(*chunks) -> bytes:
    return b"".join(b"data: " + (c if isinstance(c, bytes) else json.dumps(c).encode()) + b"\n\n" for c in chunks)


def tok_chunk(text, finish=None):
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}


def load(answers: dict[int, object], timeout_s=60.0, max_concurrency=None, n=None, turns=1, seen=None):
    """Run the load generator on ``n`` requests (default: one per answer; sessions of ``turns``)
    against a stand-in server: request i gets ``answers[i % len(answers)]``, bytes or an async
    generator of bytes; the bodies sent go to ``seen``. Returns the records."""
    import asyncio

    import httpx

    from kairos.bench.runner import Target, run_load
    from kairos.bench.workloads import RequestSpec

    async def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        i = int(body["messages"][-1]["content"])  # (each prompt is its index)
        if seen is not None:
            seen.append(body)
        answer = answers[i % len(answers)]

        async def body():
            if isinstance(answer, bytes):
                await asyncio.sleep(0.02)
                yield answer
            else:
                async for part in answer():
                    yield part
        return httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"})

    specs = [RequestSpec(i, 0.0, str(i), 1, 4, SLO(), session=i // turns if turns > 1 else None)
             for i in range(len(answers) if n is None else n)]
    target = Target("http://bench.test", "m", "chat", False, timeout_s)
    records, _ = asyncio.run(run_load(specs, target, lambda text: len(text.split()), None, max_concurrency,
                                      httpx.MockTransport(handler)))
    return records


def test_a_bad_or_empty_answer_fails_its_request_and_never_the_run():
    good = sse(tok_chunk("a"), tok_chunk(" b", "length"), {"choices": [], "usage": {"completion_tokens": 2}}, b"[DONE]")
    records = load({
        0: good,
        1: sse(tok_chunk("a"), b"{not json"),
        2: sse({"error": "the server fell over"}),
        3: b'{"choices": [{"message": {"content": "not a stream"}}]}',  # (a 200 without a stream)
        4: sse(b"[DONE]"),  # (an empty stream)
        5: sse(tok_chunk("a"), tok_chunk(" b")),  # (cut short: no finish_reason, no [DONE])
        6: sse(tok_chunk("a"), tok_chunk(" b c", "length"), {"choices": [], "usage": {"completion_tokens": None}},
               b"[DONE]"),
    })
    out = [(r.outcome, r.error, r.output_tokens) for r in records]
    assert out[0] == ("ok", None, 2) and out[6] == ("ok", None, 3)  # (no count in the usage: counted here)
    assert out[1][:1] == ("error",) and out[1][1].startswith("bad answer: JSONDecodeError")
    assert out[2] == ("error", "the server fell over", 0)
    assert out[3] == out[4] == ("error", "the answer carried no output text (not a stream, or an empty one)", 0)
    assert out[5] == ("error", "the stream ended before [DONE] or a finish_reason", 0)


def test_thinking_and_tool_calls_are_output_but_only_content_is_history():
    think = {"choices": [{"index": 0, "delta": {"reasoning_content": "Let me think."}, "finish_reason": None}]}
    call = {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c", "type": "function",
                                                                "function": {"name": "f", "arguments": "{}"}}]},
                         "finish_reason": "tool_calls"}]}
    eos = {"choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "stop"}]}
    seen = []
    records = load({0: sse(think, tok_chunk("Paris.", "stop"), b"[DONE]"), 1: sse(tok_chunk("ok", "stop"), b"[DONE]"),
                    2: sse(call, b"[DONE]"), 3: sse(eos, {"choices": [], "usage": {"completion_tokens": 1}}, b"[DONE]")},
                   turns=2, seen=seen)
    assert [(r.outcome, r.output_tokens, len(r.token_times)) for r in records] == [
        ("ok", 4, 2), ("ok", 1, 1), ("ok", 1, 1), ("ok", 1, 0)]  # (counted: "Let me think." + "Paris." is 4 words)
    second = next(b for b in seen if b["messages"][-1]["content"] == "1")
    assert second["messages"] == [{"role": "user", "content": "0"}, {"role": "assistant", "content": "Paris."},
                                  {"role": "user", "content": "1"}]


def test_the_timeout_bounds_a_whole_answer_and_latency_ends_at_the_last_token():
    import asyncio

    async def trickle():  # a token every 50 ms: each read is quick, the answer is not
        for k in range(20):
            await asyncio.sleep(0.05)
            yield sse(tok_chunk(f" t{k}"))
        yield sse(tok_chunk("", "length"), b"[DONE]")

    async def late_usage():
        yield sse({"choices": [{"index": 0, "delta": {"reasoning_content": "hm"}, "finish_reason": None}]})
        yield sse(tok_chunk(" yes", "stop"))
        await asyncio.sleep(0.3)
        yield sse({"choices": [], "usage": {"completion_tokens": 2}}, b"[DONE]")

    (slow,) = load({0: trickle}, timeout_s=0.3)
    assert (slow.outcome, slow.error) == ("timeout", "no complete answer within 0.3 s")
    (late,) = load({0: late_usage})
    assert late.outcome == "ok" and len(late.token_times) == 2  # (thinking is output: TTFT is its first token)
    assert late.end_s == late.token_times[-1] and late.output_tokens == 2


def test_max_concurrency_bounds_the_requests_in_flight():
    import asyncio

    async def slow():
        await asyncio.sleep(0.05)
        yield sse(tok_chunk("a", "length"), b"[DONE]")

    def most_at_once(records):  # (each request's time in flight: sent to its last token)
        return max(sum(r.sent_s <= t < r.end_s for r in records) for t in (q.sent_s for q in records))

    records = load({0: slow}, n=12)
    assert most_at_once(records) == 12 and all(r.outcome == "ok" for r in records)  # (all at once: rate inf)
    records = load({0: slow}, n=12, max_concurrency=3)
    assert most_at_once(records) == 3 and all(r.outcome == "ok" for r in records)


def test_bench_options_that_would_measure_the_wrong_thing_are_refused(tmp_path):
    assert SLO.parse("ttft_ms=1000") == SLO("default", 1000.0)  # (no class name: the default class)
    with pytest.raises(ValueError, match="^slo: two classes are named 'a'$"):
        BenchConfig(slo=("a:ttft_ms=100", "a:ttft_ms=10000"))
    with pytest.raises(ValueError, match="--sweep does not apply"):
        BenchConfig(trace="t.jsonl", sweep="1,2")
    with pytest.raises(ValueError, match="sweep rates must be > 0"):
        BenchConfig(sweep="nan,1")
    with pytest.raises(ValueError, match=r"bad length 'uniform:10:5'"):
        BenchConfig(input_len="uniform:10:5")
    with pytest.raises(ValueError, match="burstiness and timeout must be > 0"):
        BenchConfig(burstiness=0)
    with pytest.raises(ValueError, match="SLO field ttft_ms must be > 0"):
        SLO.parse("x:ttft_ms=-5")
    rng = random.Random(0)
    assert min(Length.parse("uniform:0:2").sample(rng) for _ in range(50)) == 1  # (clipped to >= 1)


def test_results_are_strict_json_and_compare_pairs_runs_by_rate(tmp_path, capsys):
    from rich.console import Console

    from kairos.bench.report import compare, write_json

    summary = {"request_throughput": 2.0, "ttft_s": {"p50": float("nan")}}
    write_json(tmp_path / "a.json", {"rate": float("inf")}, [{"rate": 1.0, "summary": summary},
                                                              {"rate": 2.0, "summary": summary}])
    text = (tmp_path / "a.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))["config"]["rate"] == "inf"
    write_json(tmp_path / "b.json", {}, [{"rate": 2.0, "summary": {**summary, "request_throughput": 3.0}}])
    compare(tmp_path / "a.json", tmp_path / "b.json", Console(width=200))
    shown = capsys.readouterr().out
    assert "rate 2.0 vs 2.0" in shown and "rate 1.0 vs" not in shown and "1.50" in shown
    assert "rates in one file only, not compared: 1.0" in shown


def test_a_last_token_without_text_ends_the_answer_and_classes_reach_the_server():
    import asyncio

    from kairos.bench.runner import Target, _body
    from kairos.bench.workloads import RequestSpec

    async def eos_last():  # (the EOS a server streams as "" with its finish_reason, as Kairos does)
        yield sse(tok_chunk("a"), tok_chunk(" b"))
        await asyncio.sleep(0.2)
        yield sse(tok_chunk("", "length"), {"choices": [], "usage": {"completion_tokens": 3}}, b"[DONE]")

    (r,) = load({0: eos_last})
    assert r.outcome == "ok" and r.output_tokens == 3 and r.end_s - r.token_times[-1] >= 0.15
    spec = RequestSpec(0, 0.0, "hi", 1, 8, SLO("chat", ttft_ms=500))
    _, body, headers = _body(spec, Target("http://x", "m", "chat", True), [])
    assert body["slo"] == {"ttft_ms": 500, "class": "chat"}
    assert headers["X-Kairos-SLO-Class"] == "chat" and headers["X-Kairos-TTFT-Ms"] == "500"


def test_a_sessions_shared_prefix_opens_its_first_turn_only(tiny_tok):
    tok = tiny_tok[2]
    specs = build_workload(num_requests=6, rate=float("inf"), arrival="poisson", burstiness=1.0,
                           input_len=Length.parse("4"), output_len=Length.parse("2"), prefix_len=12,
                           num_prefix_groups=2, slo_classes=[SLO()], turns=3, tokenizer=tok, seed=0)
    assert [s.session for s in specs] == [0, 0, 0, 1, 1, 1]
    first, second = specs[0].prompt, specs[3].prompt
    # the two sessions open with different prefixes (groups 0 and 1), and no later turn repeats one
    assert len(first) > len(specs[1].prompt) and len(second) > len(specs[4].prompt)
    openers = [tok(s.prompt, add_special_tokens=False).input_ids for s in specs]
    assert openers[0][:8] != openers[3][:8]
    assert all(len(ids) <= 6 for i, ids in enumerate(openers) if i % 3)  # (4 tokens, give or take a merge)


def test_slo_classes_in_turn_or_drawn_at_random(tiny_tok):
    a, b = SLO("a", ttft_ms=100), SLO("b", deadline_ms=1000)

    def names(order: str) -> list[str]:
        specs = build_workload(num_requests=16, rate=float("inf"), arrival="poisson", burstiness=1.0,
                               input_len=Length.parse("4"), output_len=Length.parse("2"), prefix_len=0,
                               num_prefix_groups=1, slo_classes=[a, b], turns=1, tokenizer=tiny_tok[2], seed=3,
                               slo_order=order)
        return [s.slo.name for s in specs]

    assert names("round_robin") == ["a", "b"] * 8
    drawn = names("random")
    assert drawn == names("random") and set(drawn) == {"a", "b"} and drawn != ["a", "b"] * 8
    with pytest.raises(ValueError, match="slo_order must be round_robin or random"):
        BenchConfig(slo_order="zigzag")
