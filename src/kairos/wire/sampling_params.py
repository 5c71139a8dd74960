"""Per-request sampling options (OpenAI names, plus vLLM's top_k, min_p, repetition_penalty, ignore_eos,
min_tokens)."""

from __future__ import annotations

import json

import msgspec

_MAX_LOGPROBS = 20
_MAX_BIAS = 100.0  # OpenAI's logit_bias range
_MAX_SPEC_CHARS = 256 << 10  # a structured output's schema, regex, grammar or choices (compiling is not free)
_GREEDY_BELOW = 1e-5  # a temperature under this samples greedily
_MAX_TEMPERATURE = 2.0  # OpenAI's bound (past it, a near-uniform draw over the whole vocabulary)
# a repetition penalty divides or multiplies float32 logits: past these it is 0 or inf there (NaNs)
_PENALTY_RANGE = (1e-30, 1e30)


class StructuredOutput(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Constrain the output to a language (vLLM's ``structured_outputs``): exactly one field is set.
    Validated on construction (its form; the grammar compiles when the engine takes the request)."""

    json: str | None = None  # a JSON schema, as JSON text
    json_object: bool = False  # any JSON object
    regex: str | None = None
    choice: tuple[str, ...] | None = None  # exactly one of these strings
    grammar: str | None = None  # a Lark grammar (llguidance's dialect) or a GBNF one
    checked: bool = False  # set by the API server's check (``structured.prepare``): the engine skips its own

    def __post_init__(self) -> None:
        given = [f for f in ("json", "regex", "choice", "grammar") if getattr(self, f) is not None]
        given += ["json_object"] if self.json_object else []
        if len(given) != 1:
            raise ValueError(f"structured output takes exactly one of json, json_object, regex, choice, grammar; got {given or 'none'}")
        size = self.chars()
        if size > _MAX_SPEC_CHARS:
            raise ValueError(f"structured output {given[0]} may have at most {_MAX_SPEC_CHARS} characters, got {size}")
        if self.json is not None:
            try:
                schema = json.loads(self.json)
            except (ValueError, RecursionError) as e:
                raise ValueError(f"structured output json is not valid JSON: {e}") from None
            if not isinstance(schema, (dict, bool)):
                raise ValueError("structured output json must be a JSON schema (an object)")
        if self.choice is not None:
            if not self.choice or not all(isinstance(c, str) and c for c in self.choice):
                raise ValueError("structured output choice must be a non-empty list of non-empty strings")
            msgspec.structs.force_setattr(self, "choice", tuple(self.choice))

    def chars(self) -> int:
        """The characters of its text (what the size of its compiled grammar follows)."""
        return sum(len(t) for t in (self.json, self.regex, self.grammar, *(self.choice or ())) if isinstance(t, str))


class SamplingParams(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Validated on construction; a bad value raises ``ValueError`` naming the field."""

    n: int = 1
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: no limit
    min_p: float = 0.0
    seed: int | None = None  # child i of an n > 1 request uses seed + i
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # also return the top-N logprobs of each sampled token
    # vLLM's: the logprob (and rank, and top-N) of each prompt token after the first; the prompt
    # is then computed whole, not read from the prefix cache (the cache keeps no logits)
    prompt_logprobs: int | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    # OpenAI's logit_bias: (token id, value added to its logit before sampling), sorted by id
    logit_bias: tuple[tuple[int, float], ...] = ()
    min_tokens: int = 0  # EOS and stop_token_ids cannot end a sequence before this many output tokens
    structured: StructuredOutput | None = None


    def __post_init__(self) -> None:
        def bad(field: str, why: str):
            raise ValueError(f"{field} {why}, got {getattr(self, field)!r}")

        if self.n < 1:
            bad("n", "must be >= 1")
        if self.max_tokens < 1:
            bad("max_tokens", "must be >= 1")
        if not 0.0 <= self.temperature <= _MAX_TEMPERATURE:
            bad("temperature", f"must be in [0, {_MAX_TEMPERATURE:g}]")
        if not 0.0 < self.top_p <= 1.0:
            bad("top_p", "must be in (0, 1]")
        if self.top_k < -1:
            bad("top_k", "must be -1 (disabled), 0 (disabled) or a positive integer")
        if not 0.0 <= self.min_p <= 1.0:
            bad("min_p", "must be in [0, 1]")
        if not self.repetition_penalty > 0.0:
            bad("repetition_penalty", "must be > 0")
        if not _PENALTY_RANGE[0] <= self.repetition_penalty <= _PENALTY_RANGE[1]:
            bad("repetition_penalty", f"must be in [{_PENALTY_RANGE[0]:g}, {_PENALTY_RANGE[1]:g}]")
        if not -2.0 <= self.presence_penalty <= 2.0:
            bad("presence_penalty", "must be in [-2, 2]")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            bad("frequency_penalty", "must be in [-2, 2]")
        if self.logprobs is not None and not 0 <= self.logprobs <= _MAX_LOGPROBS:
            bad("logprobs", f"must be in [0, {_MAX_LOGPROBS}]")
        if self.prompt_logprobs is not None and not 0 <= self.prompt_logprobs <= _MAX_LOGPROBS:
            bad("prompt_logprobs", f"must be in [0, {_MAX_LOGPROBS}]")
        if isinstance(self.stop, str):  # a single stop string, as OpenAI allows
            msgspec.structs.force_setattr(self, "stop", (self.stop,))
        if any(not s for s in self.stop):
            bad("stop", "must not contain empty strings")
        if any(t < 0 for t in self.stop_token_ids):
            bad("stop_token_ids", "must be non-negative token ids")
        bias = self.logit_bias.items() if isinstance(self.logit_bias, dict) else self.logit_bias  # (a dict as OpenAI's)
        if not all(type(t) is int and type(b) in (int, float) for t, b in bias):  # (not bools)
            bad("logit_bias", "must map integer token ids to numbers")
        msgspec.structs.force_setattr(self, "logit_bias", tuple(sorted((t, float(b)) for t, b in bias)))
        if len({t for t, _ in self.logit_bias}) != len(self.logit_bias):  # (a tuple could: their sum passes 100)
            bad("logit_bias", "must name each token id once")
        if any(t < 0 for t, _ in self.logit_bias):
            bad("logit_bias", "keys must be non-negative token ids")
        if not all(-_MAX_BIAS <= b <= _MAX_BIAS for _, b in self.logit_bias):
            bad("logit_bias", f"values must be in [{-_MAX_BIAS:g}, {_MAX_BIAS:g}]")
        if not 0 <= self.min_tokens <= self.max_tokens:
            bad("min_tokens", "must be in [0, max_tokens]")

    @property
    def greedy(self) -> bool:
        # (as vLLM: logits over a temperature of 1e-38 overflow float32, and argmax of inf/NaN is token 0)
        return self.temperature < _GREEDY_BELOW

    @property
    def has_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    @property
    def needs_last_token(self) -> bool:
        """Whether sampling needs the host to know the previous token (a step launched ahead
        samples once the step before is applied): penalties count tokens, a grammar advances by them."""
        return self.has_penalties or self.structured is not None
