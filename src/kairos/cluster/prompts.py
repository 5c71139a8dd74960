"""A request's prompt as the router sees it for prefix affinity: the model's token ids when the
router has its tokenizer (rendered and tokenized as the replicas do, so they match the block
hashes the replicas report), else the bytes of its text (matched against the router's own view)."""

from __future__ import annotations

import json

from kairos.cluster.replica import BYTES_PER_TOKEN
from kairos.server.chat_template import ChatRenderer
from kairos.server.protocol import ChatCompletionRequest, CompletionRequest
from kairos.server.serving import APIError
from kairos.server.tokenizing import Tokenizing


class PromptReader:
    def __init__(self, tokenizer=None, template: str | None = None):
        self.tokenizer = tokenizer
        self.renderer = ChatRenderer(tokenizer, template) if tokenizer is not None else None
        self.tokens = Tokenizing(tokenizer, 1 << 30) if tokenizer is not None else None

    async def read(self, req: ChatCompletionRequest | CompletionRequest) -> tuple[list[int], bool, int]:
        """(ids, whether they are the model's tokens, the prompt's length in tokens)."""
        if isinstance(req, ChatCompletionRequest):
            if self.tokenizer is not None:
                try:
                    ids = await self.tokens.ids(self.renderer.render(req), "messages", fit=False,
                                                add_special_tokens=req.add_special_tokens)
                    return ids, True, len(ids)
                except APIError:
                    pass  # (the replica answers for the messages it cannot render)
            text = json.dumps([m if isinstance(m, dict) else m.model_dump(exclude_none=True) for m in req.messages],
                              ensure_ascii=False, default=str)
            return _as_text(text)
        p = req.prompt
        first = p if isinstance(p, str) or (p and isinstance(p[0], int)) else (p[0] if p else "")
        if isinstance(first, str):
            if self.tokenizer is not None and first:
                ids = await self.tokens.ids(first, "prompt", fit=False)
                return ids, True, len(ids)
            return _as_text(first)
        return list(first), True, len(first)


def _as_text(text: str) -> tuple[list[int], bool, int]:
    raw = text.encode("utf-8", "surrogatepass")
    return list(raw), False, max(1, len(raw) // BYTES_PER_TOKEN)
