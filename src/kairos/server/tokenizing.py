"""Tokenizing in the API process without holding its event loop: a prompt that cannot fit the
context is refused by its length before it is tokenized, and a long text is tokenized on a
thread (the fast tokenizer releases the GIL), so other requests go on meanwhile."""

from __future__ import annotations

import asyncio
import math

from kairos.server.serving import APIError

# texts up to this many characters are tokenized inline: a thread's hop costs more than they take
INLINE_CHARS = 32 << 10


class Tokenizing:
    """The API's tokenizer calls. ``max_model_len``: the engine's; ``None`` tokenizer: ids only."""

    def __init__(self, tokenizer, max_model_len: int):
        self.tokenizer, self.max_model_len = tokenizer, max_model_len
        self._longest: int | None = None  # characters of the longest token (a prompt's lower bound)

    async def ids(self, text: str, param: str, *, fit: bool = True, **kw) -> list[int]:
        """``text``'s token ids. ``fit``: refuse at once (400 ``context_length_exceeded``) a text
        too long to fit the context whatever its tokens: each token covers at most the longest
        token's characters."""
        if fit and len(text) > (self.max_model_len + 1) * self.longest():
            least = math.ceil(len(text) / self.longest())
            raise APIError(400, f"This model's maximum context length is {self.max_model_len} tokens. However, your "
                                f"prompt of {len(text)} characters is longer than that (at least {least} tokens). "
                                f"Please reduce the length.", param=param, code="context_length_exceeded")
        if len(text) <= INLINE_CHARS:
            return self.tokenizer(text, **kw).input_ids
        return (await asyncio.to_thread(self.tokenizer, text, **kw)).input_ids

    async def text(self, ids: list[int]) -> str:
        if len(ids) <= INLINE_CHARS // 4:
            return self.tokenizer.decode(ids)
        return await asyncio.to_thread(self.tokenizer.decode, ids)

    def longest(self) -> int:
        if self._longest is None:
            vocab = self.tokenizer.get_vocab()
            self._longest = max(1, max(map(len, vocab), default=1))
        return self._longest
