"""Incremental detokenization (UTF-8 safe across token boundaries) and stop-string matching."""

from __future__ import annotations

import codecs
import functools
import random
from collections.abc import Callable
from dataclasses import dataclass

_PROMPT_CONTEXT = 6  # prompt tokens decoded with the output so word-boundary spaces come out right


def decoder(tokenizer, skip_special_tokens: bool) -> Callable[[list[int]], str]:
    """``tokenizer.decode`` of a token id list. For a fast tokenizer without the clean-up pass
    that is the Rust tokenizer's own decode, called directly: a third of the time (2 us vs
    5.7 us a call for SmolLM2's), twice per token per sequence (benchmarks/host_step.py)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return functools.partial(backend.decode, skip_special_tokens=skip_special_tokens)
    return functools.partial(tokenizer.decode, skip_special_tokens=skip_special_tokens)


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas.

    Decodes a sliding window ``ids[prefix:]`` against ``ids[prefix:read]``; a delta that ends in
    U+FFFD is a multi-byte character cut between tokens, so it waits for the next token.
    """

    def __init__(self, tokenizer, prompt_token_ids: list[int], skip_special_tokens: bool = True):
        self._decode = decoder(tokenizer, skip_special_tokens)
        self.ids = list(prompt_token_ids[-_PROMPT_CONTEXT:])
        self.prefix = 0
        self.read = len(self.ids)

    def add(self, token_ids: list[int]) -> str:
        self.ids.extend(token_ids)
        prefix_text = self._decode(self.ids[self.prefix : self.read])
        new_text = self._decode(self.ids[self.prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """At the end: whatever is still held back (an incomplete character decodes as U+FFFD)."""
        prefix_text = self._decode(self.ids[self.prefix : self.read])
        new_text = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""


@dataclass(frozen=True)
class ByteTable:
    """Each token id's bytes, for a byte-level BPE tokenizer (GPT-2's scheme: SmolLM, Llama 3,
    Qwen): there ``decode(ids)`` is the ids' bytes joined and read as UTF-8, invalid bytes as
    U+FFFD. Ids past the table (a model's padded vocabulary) decode to nothing, as in tokenizers."""

    ids: list[bytes]
    skip: list[bytes]  # the same, special tokens as b"" (skip_special_tokens)

    def decode(self, token_ids: list[int], skip_special_tokens: bool) -> str:
        table = self.skip if skip_special_tokens else self.ids
        return b"".join(table[i] if i < len(table) else b"" for i in token_ids).decode("utf-8", "replace")


def _byte_chars() -> dict[str, int]:
    """GPT-2's map from the printable characters byte-level vocabularies are written in to bytes."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    code = dict(zip(printable, printable))
    code.update((b, 256 + i) for i, b in enumerate(b for b in range(256) if b not in code))
    return {chr(c): b for b, c in code.items()}


def byte_table(tokenizer, checks: int = 64) -> ByteTable | None:
    """The :class:`ByteTable` of ``tokenizer`` when its decode is a byte-level one (its Rust
    decoder is ``ByteLevel``, no clean-up pass) and agrees with the table on every added token
    alone and on ``checks`` random sequences; else None (``IncrementalDetokenizer`` serves it)."""
    from tokenizers import decoders

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if (backend is None or getattr(tokenizer, "clean_up_tokenization_spaces", True)
            or not isinstance(backend.decoder, decoders.ByteLevel)):
        return None
    chars = _byte_chars()

    def token_bytes(token: str) -> bytes:
        # the ByteLevel decoder's rule, token by token (added tokens too): its characters' bytes
        # when every one is in the map, else the token's own text
        try:
            return bytes([chars[c] for c in token])
        except KeyError:
            return token.encode()

    added = backend.get_added_tokens_decoder()
    table: list[bytes | None] = [None] * backend.get_vocab_size(with_added_tokens=True)
    try:
        for token, i in backend.get_vocab(with_added_tokens=False).items():
            table[i] = token_bytes(token)
        for i, tok in added.items():
            table[i] = token_bytes(tok.content)
    except IndexError:  # an id past the size
        return None
    if None in table:  # an id with no token
        return None
    ids: list[bytes] = table  # type: ignore[assignment]
    out = ByteTable(ids, [b"" if i in added and added[i].special else b for i, b in enumerate(ids)])
    rng = random.Random(0)
    specials = sorted(added) or [0]
    samples = [[i] for i in sorted(added)] + [
        [rng.choice(specials) if rng.random() < 0.1 else rng.randrange(len(ids)) for _ in range(12)]
        for _ in range(checks)]
    for seq in samples:
        for skip in (True, False):
            if out.decode(seq, skip) != backend.decode(seq, skip_special_tokens=skip):
                return None
    return out


class ByteLevelDetokenizer:
    """Text deltas through an incremental UTF-8 decoder over the tokens' bytes (a
    :class:`ByteTable`): a table lookup per token instead of two decodes of a window (0.8 vs
    2.4 us, benchmarks/detokenize.py), and the text of the output is exactly ``decode(output ids)`` (a character cut by the
    prompt's end shows as U+FFFD, as there)."""

    def __init__(self, table: ByteTable, skip_special_tokens: bool = True):
        self._table = table.skip if skip_special_tokens else table.ids
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def add(self, token_ids: list[int]) -> str:
        table = self._table
        try:
            data = b"".join([table[i] for i in token_ids])
        except IndexError:  # (an id of a padded vocabulary: nothing, as in tokenizers)
            data = b"".join([table[i] if i < len(table) else b"" for i in token_ids])
        return self._utf8.decode(data)

    def flush(self) -> str:
        """At the end: an incomplete character decodes as U+FFFD."""
        return self._utf8.decode(b"", final=True)


class StopStringMatcher:
    """Finds the first stop string in streamed text and holds back text that could start one.

    ``feed(delta)`` returns ``(text safe to emit now, matched stop string or None)``; the stop
    string itself is not emitted unless ``include`` is set. ``feed(delta, search=False)`` holds
    back the same tail without matching (before ``min_tokens``): a stop string found later must end
    in text fed with ``search`` on, and may begin before it, as vLLM's.
    """

    def __init__(self, stops: tuple[str, ...], include: bool = False):
        self.stops = stops
        self.include = include
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.pending = ""

    def feed(self, delta: str, search: bool = True) -> tuple[str, str | None]:
        if not self.stops:
            return delta, None
        text = self.pending + delta
        best = None
        for s in self.stops if search else ():
            # (a match inside the held-back tail alone was searched already, or must not count)
            i = text.find(s, max(0, len(self.pending) - len(s) + 1))
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        if best is not None:
            i, s = best
            self.pending = ""
            return text[: i + len(s)] if self.include else text[:i], s
        cut = max(0, len(text) - self.hold)
        self.pending = text[cut:]
        return text[:cut], None

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return text
