"""Streaming in the API process: streams of several prompts are merged without one running ahead
of the reader and are closed with it; a stream that fell behind sends one chunk for what waits;
tokens made after a stop string are not sent."""

from __future__ import annotations

import asyncio
import time

import pytest

from kairos.detok.output_processor import CompletionOutput, Logprob
from kairos.server.serving import Generator, Tracked, completion_logprobs, merge
from kairos.wire.outputs import SeqOutput
from kairos.wire.sampling_params import SamplingParams


def test_merge_hands_over_each_item_before_its_stream_moves_on():
    async def stream(name: str, box: dict):
        for k in range(3):
            box["text"] = f"{name}{k}"  # one live object, rewritten per item (as a completion's delta)
            yield box

    async def read() -> list[str]:
        seen = []
        async for _, box in merge([stream("a", {}), stream("b", {})]):
            seen.append(box["text"])
            await asyncio.sleep(0)  # the reader yields to the loop while it writes the chunk out
        return seen

    seen = asyncio.run(read())
    assert sorted(seen) == ["a0", "a1", "a2", "b0", "b1", "b2"]
    assert [t for t in seen if t[0] == "a"] == ["a0", "a1", "a2"]


@pytest.mark.parametrize("streams", [1, 2])
def test_closing_the_merge_closes_every_stream_at_once(streams):
    closed: list[str] = []

    async def stream(name: str):
        try:
            for k in range(5):
                yield k
        finally:  # (follow's finally: where a request is aborted and its slot freed)
            closed.append(name)

    async def read():
        chunks = merge([stream(str(i)) for i in range(streams)])
        async for _ in chunks:
            break  # (a stream body that failed after its first chunk)
        await chunks.aclose()
        assert sorted(closed) == [str(i) for i in range(streams)]  # before anything is collected

    asyncio.run(read())


def test_merge_propagates_an_error_and_stops_the_other_streams():
    async def ok():
        for k in range(100):
            yield k
            await asyncio.sleep(0)

    async def broken():
        yield "x"
        raise RuntimeError("engine gone")

    async def read():
        async for _ in merge([ok(), broken()]):
            pass

    with pytest.raises(RuntimeError, match="engine gone"):
        asyncio.run(read())


def test_merge_closes_every_stream_when_its_reader_is_cancelled():
    closed = []

    async def stream(name: str):
        try:
            for k in range(100):
                yield k
                await asyncio.sleep(0)
        finally:
            closed.append(name)  # (follow aborts its engine request here)

    async def main():
        three = asyncio.Event()

        async def reader():  # a streaming response whose client went away
            try:
                async for _, k in merge([stream("a"), stream("b"), stream("c")]):
                    if k == 3:
                        three.set()
            finally:
                closed.append("reader done")  # (the response ends here: the requests must be aborted by now)

        task = asyncio.create_task(reader())
        await three.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert sorted(closed[:3]) == ["a", "b", "c"] and closed[3:] == ["reader done"]


class StubClient:
    queues: dict = {}

    def __init__(self):
        self.calls = []

    def finish_sequence(self, rid, index):
        self.calls.append(("finish_sequence", rid, index))

    def release(self, rid):
        self.calls.append(("release", rid))

    def abort(self, rid):
        self.calls.append(("abort", rid))


class StubMetrics:
    def finished(self, outcome, prompt_tokens, token_times, *args):
        self.token_times = token_times


def chunks(tok, params: SamplingParams, rounds: list[list[tuple[int, str, str | None]]]):
    """Feed a Generator's follow ``rounds`` of engine outputs (index, text, finish reason), a
    round at a time with the stream reading in between; returns the chunks a stream would send,
    (index, delta, finish reason), the calls made to the engine client, and the request's
    output and token times (as the metrics got them)."""
    gen = Generator(StubClient(), tok, StubMetrics(), 10)
    out = gen.processor.add_request("r", None, [1, 2], params)
    q: asyncio.Queue = asyncio.Queue()
    tr = Tracked("r", out, q, time.monotonic(), None)

    async def feed():
        for batch in rounds:
            for index, text, finish in batch:
                q.put_nowait(SeqOutput("r", index, tok(text, add_special_tokens=False).input_ids, finish_reason=finish))
            await asyncio.sleep(0.01)

    async def run():
        feeder = asyncio.create_task(feed())
        sent = []
        async for _, (t, index) in merge([gen.follow(tr)]):
            o = t.output.outputs[index]
            sent.append((index, o.delta, o.finish_reason))
        await feeder
        return sent, gen.client.calls, out, gen.metrics.token_times

    return asyncio.run(run())


def test_a_stream_that_fell_behind_sends_one_chunk_and_nothing_after_a_stop(default_tokenizer):
    params = SamplingParams(n=2, stop=["."], max_tokens=5, include_stop_str_in_output=True)
    sent, calls, out, times = chunks(default_tokenizer, params, [
        [(0, "Hello", None), (1, "Hi", None), (0, " world", None)],  # waiting together: one chunk for index 0
        [(0, ".", None)],
        [(0, " more", None)],  # made before the engine heard of the stop string: not sent
        [(1, " there", "length")],
    ])
    assert sent == [(0, "Hello world", None), (1, "Hi", None), (0, ".", "stop"), (1, " there", "length")]
    assert ("finish_sequence", "r", 0) in calls and calls[-1] == ("release", "r")
    assert len(times) == sum(len(o.token_ids) for o in out.outputs)


def test_tokens_past_a_stop_in_the_same_wake_up_are_not_counted(default_tokenizer):
    # (a kept draft, or a stream that fell behind, brings tokens past a stop string at once)
    params = SamplingParams(stop=["."], max_tokens=8)
    sent, calls, out, times = chunks(default_tokenizer, params, [
        [(0, "Hello", None), (0, ".", None), (0, " more", None), (0, " words", None)],
    ])
    assert sent == [(0, "Hello", "stop")] and ("finish_sequence", "r", 0) in calls
    assert out.outputs[0].token_ids == default_tokenizer("Hello.", add_special_tokens=False).input_ids
    assert len(times) == len(out.outputs[0].token_ids)  # (the metrics' generation tokens, TPOT)


def test_legacy_top_logprobs_keep_the_likelier_of_two_tokens_with_one_text():
    # (byte tokens of a cut character both read U+FFFD: keyed by text, one entry stays)
    top = [(7, "\ufffd", -0.5, [0xE2]), (9, "a", -1.0, [0x61]), (8, "\ufffd", -2.0, [0xF0])]
    out = CompletionOutput(0, logprobs=[Logprob(9, "a", -1.0, top, [0x61]), Logprob(5, "bc", -0.1, top[1:2], [])])
    assert completion_logprobs(out) == {"tokens": ["a", "bc"], "token_logprobs": [-1.0, -0.1],
                                        "top_logprobs": [{"\ufffd": -0.5, "a": -1.0}, {"a": -1.0}],
                                        "text_offset": [0, 1]}
    # echo: the prompt's tokens ahead (the first with no logprob); a later chunk's offsets count them
    prompt = [Logprob(3, "xyz", None, [], []), Logprob(4, "w", -2.0, top[1:2], [], 5)]
    assert completion_logprobs(out, 0, prompt) == {"tokens": ["xyz", "w", "a", "bc"],
                                                   "token_logprobs": [None, -2.0, -1.0, -0.1],
                                                   "top_logprobs": [None, {"a": -1.0}, {"\ufffd": -0.5, "a": -1.0},
                                                                    {"a": -1.0}],
                                                   "text_offset": [0, 3, 4, 5]}
    assert completion_logprobs(out, 1, prompt)["text_offset"] == [5]
    assert completion_logprobs(out, 1, prompt, at=7)["text_offset"] == [7]  # (a stream's running offset)
    assert completion_logprobs(out, 0, prompt, generated=False)["tokens"] == ["xyz", "w"]
