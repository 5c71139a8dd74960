"""Structured output: grammars compiled by llguidance, token masks applied to the logits.

Each constrained sequence owns an ``LLMatcher`` (the grammar's parse state). Before a step samples,
the matcher fills a bitmask of the tokens that keep the output in the language; after, it consumes
the sampled token (``sampler.apply_grammar`` applies the mask). The matcher is advanced on the
host, so a step launched ahead samples a constrained row only once the previous step's tokens are
known (``SamplingParams.needs_last_token``). No torch here: the API process checks requests
with :func:`prepare`.

llguidance compiles grammars recursively, and a deep one (a chain of 1,000 ``$ref``s is a 94 KB
schema) overflows a thread's usual 8 MiB stack: a segfault, not an exception. Every compile runs
on a :class:`Compiler` thread with a deep stack.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, wait
from queue import SimpleQueue
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llguidance import LLMatcher, LLParserLimits, LLTokenizer

import msgspec

from kairos.grammar.limits import regex_elements, release_memory, resident_bytes, schema_patterns
from kairos.wire.sampling_params import StructuredOutput

_STACK_BYTES = 256 << 20  # (reserved, not committed: the pages a compile touches)
_MAX_GBNF_CHARS = 32 << 10  # GBNF converts to Lark in Python, in time quadratic in its rules
# compiled grammars kept (requests often share a schema), and the characters of their specs: a
# compiled JSON schema holds up to ~60 bytes per character of it (benchmarks/grammar_memory.py)
_CACHED = 64
_CACHED_CHARS = 4 << 20
# and the memory their compiles kept (a 26-character regex that unrolls to a million states kept
# ~150 MB): measured as the process's resident memory across each compile
_CACHED_BYTES = 512 << 20
# a regex whose repetitions unroll to more elements than this is refused before it is compiled
# (``((a{101}){100}){100}``: 1,010,000; compiling it takes seconds and ~150 MB)
_MAX_REGEX_ELEMENTS = 100_000


class Compiler:
    """One thread with a deep stack that runs compiles, in submission order, until :meth:`close`."""

    def __init__(self) -> None:
        self._jobs: SimpleQueue = SimpleQueue()
        # (a process setting, for threads started while it holds: put back at once; this one keeps its stack)
        old = threading.stack_size(_STACK_BYTES)
        try:
            threading.Thread(target=self._run, name="kairos-grammar", daemon=True).start()
        finally:
            threading.stack_size(old)

    def submit(self, fn: Callable, *args) -> Future:
        fut: Future = Future()
        self._jobs.put((fn, args, fut))
        return fut

    def close(self) -> None:
        """End the thread once the compiles queued before are done."""
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, fut = job
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args))
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    fut.set_exception(e)


def _limits() -> LLParserLimits:
    from llguidance import LLParserLimits

    return LLParserLimits(verbose_errors=False)  # (verbose errors hold the whole grammar)


class StructuredOutputs:
    """Compiles a request's :class:`StructuredOutput` into a matcher for this model's tokenizer.

    :meth:`check` checks a grammar at once (without the tokenizer: fast), :meth:`start` compiles
    it for the tokenizer on a :class:`Compiler` thread, so the engine goes on stepping meanwhile
    (the request waits, as vLLM's do for their grammar), and :meth:`take` hands out the matcher.
    The last 64 grammars stay compiled, or fewer when their specs pass 4 Mi characters. The
    tokenizer is loaded by the first compile (``load_tokenizer``), so an engine that never sees a
    constrained request pays nothing for it."""

    def __init__(self, load_tokenizer: Callable[[], Any], vocab_size: int, eos_token_ids: list[int],
                 max_cached: int = _CACHED, max_cached_chars: int = _CACHED_CHARS,
                 max_cached_bytes: int = _CACHED_BYTES) -> None:
        self._load_tokenizer = load_tokenizer
        self.max_cached, self.max_cached_chars, self.max_cached_bytes = max_cached, max_cached_chars, max_cached_bytes
        self._cached_chars = self._cached_bytes = 0
        self._kept: dict[StructuredOutput, int] = {}  # spec -> bytes its compile kept (resident memory)
        self.vocab_size = vocab_size
        self.eos_token_ids = [t for t in sorted(eos_token_ids) if t < vocab_size]
        self._ll = None  # llguidance.LLTokenizer
        # two threads: a check (waited for) must not queue behind a long compile (not waited for)
        self._threads: tuple[Compiler, Compiler] | None = None
        self._cache: OrderedDict[StructuredOutput, Any] = OrderedDict()  # spec -> a matcher at its start
        self._compiling: dict[StructuredOutput, list] = {}  # spec -> [its compile's future, requests waiting]

    def check(self, spec: StructuredOutput) -> StructuredOutput:
        """``spec`` as :meth:`start` compiles it; raises ``ValueError`` now when it does not
        compile. Checked without the tokenizer (milliseconds), unless compiled already or checked
        by the API server (``spec.checked``)."""
        if spec.checked or spec in self._cache or spec in self._compiling:
            return spec
        return self._compilers()[0].submit(prepare, spec).result()  # (a deep grammar needs that thread's stack)

    def start(self, spec: StructuredOutput, checked: StructuredOutput) -> Future:
        """A future of ``spec``'s compiled grammar (``checked``: :meth:`check`'s), for one
        :meth:`take` or :meth:`release`. Requests with one grammar share its compile."""
        self._sweep()
        entry = self._compiling.get(spec)
        if entry is None:
            fut: Future = Future()
            if spec in self._cache:
                self._cache.move_to_end(spec)
                fut.set_result(self._cache[spec])
                return fut
            entry = self._compiling[spec] = [self._compilers()[1].submit(self._measured, spec, checked), 0]
        entry[1] += 1  # (its users: a compile no one waits for any more is dropped)
        return entry[0]

    def take(self, spec: StructuredOutput, fut: Future) -> LLMatcher:
        """A fresh matcher of ``spec`` once ``fut`` (:meth:`start`'s) is done; raises what the
        compile raised (``ValueError``: the grammar does not compile for the tokenizer)."""
        self._done_with(spec, fut)
        return fut.result().deep_copy()

    def release(self, spec: StructuredOutput, fut: Future) -> None:
        """A request that waited for ``fut`` is gone (aborted)."""
        self._done_with(spec, fut)

    def _done_with(self, spec: StructuredOutput, fut: Future) -> None:
        entry = self._compiling.get(spec)
        if entry is None or entry[0] is not fut:
            return
        entry[1] -= 1
        if fut.done():
            self._settle(spec, fut)
        elif entry[1] == 0 and fut.cancel():  # (cancel: only while it waits its turn)
            del self._compiling[spec]

    def _settle(self, spec: StructuredOutput, fut: Future) -> None:
        """A finished compile leaves ``_compiling``: into the cache, when it succeeded."""
        del self._compiling[spec]
        if fut.cancelled() or fut.exception() is not None:
            self._kept.pop(spec, None)
            release_memory()  # (what a failed compile built)
            return
        self._cache[spec] = fut.result()  # (kept for the next request with it)
        self._cached_chars += spec.chars()
        self._cached_bytes += self._kept.get(spec, 0)
        # the least recently used go first; the newest stays, however large
        evicted = False
        while len(self._cache) > 1 and (len(self._cache) > self.max_cached or self._cached_chars > self.max_cached_chars
                                        or self._cached_bytes > self.max_cached_bytes):
            old = self._cache.popitem(last=False)[0]
            self._cached_chars -= old.chars()
            self._cached_bytes -= self._kept.pop(old, 0)
            evicted = True
        if evicted:
            release_memory()

    def cached(self) -> list[StructuredOutput]:
        """The compiled grammars kept, least recently used first."""
        return list(self._cache)

    def _sweep(self) -> None:
        """Compiles that ran to their end after their requests left."""
        for spec, (fut, users) in list(self._compiling.items()):
            if users == 0 and fut.done():
                self._settle(spec, fut)

    def matcher(self, spec: StructuredOutput) -> LLMatcher:
        """A fresh matcher for ``spec``, waiting for its compile (offline tools and tests)."""
        fut = self.start(spec, self.check(spec))
        wait([fut])
        return self.take(spec, fut)

    def _compilers(self) -> tuple[Compiler, Compiler]:
        if self._threads is None:
            self._threads = (Compiler(), Compiler())
            for t in self._threads:
                weakref.finalize(self, t.close)  # (engines come and go in tests)
        return self._threads

    def _measured(self, spec: StructuredOutput, checked: StructuredOutput) -> LLMatcher:
        """``checked`` compiled, and the memory that kept noted under ``spec`` (read by the
        engine's thread once the future is done)."""
        self._tokenizer()  # (loaded first: not the grammar's memory)
        before = resident_bytes()
        m = self._compile(checked)
        self._kept[spec] = max(0, resident_bytes() - before)
        return m

    def _compile(self, spec: StructuredOutput) -> LLMatcher:
        from llguidance import LLMatcher

        m = LLMatcher(self._tokenizer(), grammar_of(spec), log_level=0, limits=_limits())
        if not m.is_error():
            m.compute_bitmask()  # (the first step's mask: a grammar past the parser's limits fails here, not mid-way)
        if m.is_error():
            raise ValueError(f"structured output does not compile: {short_error(m.get_error())}")
        return m

    def _tokenizer(self) -> LLTokenizer:
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
    """The llguidance grammar (its JSON form) of a request's constraint; ``ValueError`` if it has
    none. Run it on a :class:`Compiler` (a deep GBNF grammar recurses in Python too)."""
    from llguidance import LLMatcher
    from llguidance.gbnf_to_lark import is_lark_syntax

    try:
        if spec.json is not None:
            return LLMatcher.grammar_from_json_schema(spec.json)
        if spec.json_object:
            return LLMatcher.grammar_from_json_schema(json.dumps({"type": "object"}))
        if spec.regex is not None:
            return LLMatcher.grammar_from_regex(spec.regex)
        if spec.choice is not None:
            return LLMatcher.grammar_from_regex("|".join(re.escape(c) for c in spec.choice))
        return LLMatcher.grammar_from_lark(spec.grammar if is_lark_syntax(spec.grammar) else _gbnf_to_lark(spec.grammar))
    except ValueError:
        raise
    except Exception as e:  # (llguidance's and the converter's errors are plain exceptions, RecursionError too)
        raise ValueError(f"structured output does not compile: {short_error(f'{type(e).__name__}: {e}')}") from None


def _gbnf_to_lark(grammar: str) -> str:
    from llguidance.gbnf_to_lark import gbnf_to_lark

    if len(grammar) > _MAX_GBNF_CHARS:
        raise ValueError(f"structured output grammar: a GBNF grammar may have at most {_MAX_GBNF_CHARS} characters "
                         f"(a Lark one more), got {len(grammar)}")
    try:
        return gbnf_to_lark(grammar)
    except Exception as e:  # noqa: BLE001 - its parse errors are GbnfToLarkError or plain Exception
        raise ValueError(f"structured output grammar is neither Lark (no start rule) nor valid GBNF: {short_error(str(e))}"
                         ) from None


def prepare(spec: StructuredOutput) -> StructuredOutput:
    """``spec`` checked (``ValueError`` if it does not compile), a GBNF grammar as Lark, so that
    the engine compiles it without converting it again (no tokenizer needed: the API process
    runs it, on a :class:`Compiler`)."""
    from llguidance import LLMatcher
    from llguidance.gbnf_to_lark import is_lark_syntax

    if spec.grammar is not None and not is_lark_syntax(spec.grammar):
        spec = StructuredOutput(grammar=_gbnf_to_lark(spec.grammar))
    regexes = [spec.regex] if spec.regex is not None else schema_patterns(_json_or_none(spec.json))
    for rx in regexes:
        if (n := regex_elements(rx)) > _MAX_REGEX_ELEMENTS:
            raise ValueError(f"structured output regex unrolls to {n} elements (its repetitions multiplied out), "
                             f"more than {_MAX_REGEX_ELEMENTS}")
    error = LLMatcher.validate_grammar(grammar_of(spec), limits=_limits())
    if error:
        raise ValueError(f"structured output does not compile: {short_error(error)}")
    return msgspec.structs.replace(spec, checked=True)


def short_error(error: str, limit: int = 300) -> str:
    """An error for a 400 body: llguidance's quote the grammar, which may be 256 KiB."""
    error = error.strip()
    return error if len(error) <= limit else error[:limit] + f"... ({len(error) - limit} more characters)"


def _json_or_none(text: str | None):
    try:
        return json.loads(text) if text is not None else None
    except ValueError:  # (the grammar's own check says what is wrong with it)
        return None
