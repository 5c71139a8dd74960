"""Streams of several prompts: the outputs are merged without a stream running ahead of the reader."""

from __future__ import annotations

import asyncio

import pytest

from kairos.server.serving import merge


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
