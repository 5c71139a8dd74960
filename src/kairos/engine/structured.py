"""Structured output: grammars compiled by llguidance, token masks applied to the logits.

Each constrained sequence owns an ``LLMatcher`` (the grammar's parse state). Before a step samples,
the matcher fills a bitmask of the tokens that keep the output in the language; after, it consumes
the sampled token (``sampler.apply_grammar`` applies the mask). The matcher is advanced on the
host, so a step with a constrained sequence cannot be launched before the previous one's tokens
are known (``SamplingParams.needs_last_token``). No torch here: the API process checks requests
with :func:`validate`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from kairos.engine.sampling_params import StructuredOutput


class StructuredOutputs:
    """Compiles a request's :class:`StructuredOutput` into a matcher for this model's tokenizer.

    The tokenizer is loaded at the first constrained request (``load_tokenizer``), so an engine
    that never sees one pays nothing for it."""

    def __init__(self, load_tokenizer: Callable[[], Any], vocab_size: int, eos_token_ids: list[int]):
        self._load_tokenizer = load_tokenizer
        self.vocab_size = vocab_size
        self.eos_token_ids = [t for t in sorted(eos_token_ids) if t < vocab_size]
        self._ll = None  # llguidance.LLTokenizer

    def matcher(self, spec: StructuredOutput):
        """A fresh matcher for ``spec``; raises ``ValueError`` when the grammar does not compile."""
        from llguidance import LLMatcher

        grammar = grammar_of(spec)
        tok = self._tokenizer()
        error = LLMatcher.validate_grammar(grammar, tok)
        if error:
            raise ValueError(f"structured output does not compile: {error.strip()}")
        m = LLMatcher(tok, grammar, log_level=0)
        if m.is_error():
            raise ValueError(f"structured output does not compile: {m.get_error()}")
        return m

    def _tokenizer(self):
        if self._ll is None:
            import llguidance.hf

            tok = self._load_tokenizer()
            if tok is None:
                raise ValueError("structured output needs a tokenizer; this model has none")
            if not self.eos_token_ids:
                raise ValueError("structured output needs an EOS token; this model has none")
            self._ll = llguidance.hf.from_tokenizer(tok, n_vocab=self.vocab_size, eos_token=self.eos_token_ids)
        return self._ll


def grammar_of(spec: StructuredOutput) -> str:
    """The llguidance grammar (its JSON form) of a request's constraint."""
    from llguidance import LLMatcher
    from llguidance.gbnf_to_lark import GbnfToLarkError, any_to_lark

    if spec.json is not None:
        return LLMatcher.grammar_from_json_schema(spec.json)
    if spec.json_object:
        return LLMatcher.grammar_from_json_schema(json.dumps({"type": "object"}))
    if spec.regex is not None:
        return LLMatcher.grammar_from_regex(spec.regex)
    if spec.choice is not None:
        return LLMatcher.grammar_from_regex("|".join(re.escape(c) for c in spec.choice))
    try:  # Lark as it is; GBNF (llama.cpp's, as vLLM's xgrammar takes it) converted to Lark
        lark = any_to_lark(spec.grammar)
    except GbnfToLarkError as e:
        raise ValueError(f"structured output grammar is neither Lark (no start rule) nor valid GBNF: {e}") from None
    return LLMatcher.grammar_from_lark(lark)


def validate(spec: StructuredOutput) -> None:
    """Raise ``ValueError`` if ``spec`` does not compile (no tokenizer needed: the API checks
    requests with it before they reach the engine)."""
    from llguidance import LLMatcher

    error = LLMatcher.validate_grammar(grammar_of(spec))
    if error:
        raise ValueError(f"structured output does not compile: {error.strip()}")
