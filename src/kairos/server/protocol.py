"""OpenAI request/response schema (pydantic) and its mapping onto SamplingParams."""

from __future__ import annotations

import json
import time
import uuid
from types import EllipsisType
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kairos.server.tools import Tool, ToolCallIn, ToolChoice, ToolPlan, constraint, template_call
from kairos.server.tools import plan as plan_tools
from kairos.wire.sampling_params import SamplingParams, StructuredOutput
from kairos.wire.slo import SLO

# integers travel to the engine as msgpack int64: a larger one is a 400 here, not a failure to send
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


class StreamOptions(BaseModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM: with include_usage, the usage so far in every chunk


class SLOBody(BaseModel):
    """Kairos extension: the request's service-level objective (ms from arrival)."""

    model_config = ConfigDict(extra="forbid")

    ttft_ms: float | None = Field(default=None, gt=0)
    tpot_ms: float | None = Field(default=None, gt=0)
    deadline_ms: float | None = Field(default=None, gt=0)
    on_miss: Literal["refuse", "best_effort"] = "refuse"
    name: str = Field(default="default", alias="class", max_length=64)


_SLO_HEADERS = {"x-kairos-ttft-ms": "ttft_ms", "x-kairos-tpot-ms": "tpot_ms", "x-kairos-deadline-ms": "deadline_ms",
                "x-kairos-on-miss": "on_miss", "x-kairos-slo-class": "class"}


def slo_from(body_slo: SLOBody | None, body_priority: int | None, headers) -> tuple[SLO | None, int]:
    """The SLO and priority of a request: body fields win over the X-Kairos-* headers."""
    fields: dict[str, Any] = {}
    for h, name in _SLO_HEADERS.items():
        if h in headers:
            fields[name] = headers[h]
    if body_slo is not None:
        fields.update(body_slo.model_dump(by_alias=True, exclude_unset=True))
    priority = body_priority
    if priority is None and "x-kairos-priority" in headers:
        try:
            priority = int(headers["x-kairos-priority"])
            if not -(2**63) <= priority < 2**63:
                raise ValueError
        except ValueError:
            raise ValueError("priority (X-Kairos-Priority) must be a 64-bit integer") from None
    if not fields:
        return None, priority or 0
    try:
        checked = SLOBody.model_validate(fields)
    except ValidationError as e:
        err = e.errors()[0]
        raise ValueError(f"slo.{'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from None
    return SLO(checked.ttft_ms, checked.tpot_ms, checked.deadline_ms, checked.on_miss, checked.name), priority or 0


class JsonSchemaFormat(BaseModel):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | bool | None = Field(default=None, alias="schema")
    strict: bool | None = None  # (always strict here: the output follows the schema)


class ResponseFormat(BaseModel):
    """OpenAI's ``response_format``."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputsBody(BaseModel):
    """vLLM's ``structured_outputs``: exactly one field."""

    model_config = ConfigDict(extra="forbid")

    json_: dict[str, Any] | bool | str | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None


def _schema_text(schema: Any) -> str:
    return schema if isinstance(schema, str) else json.dumps(schema)


class _SamplingFields(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown OpenAI fields (user, metadata, ...) are accepted and ignored

    model: str | None = None
    max_tokens: Int64 | None = None
    n: Int64 = 1
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: Int64 | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[Int64, Annotated[float, Field(ge=-100, le=100)]] | None = None  # keys: token ids
    stream: bool = False
    stream_options: StreamOptions | None = None
    # vLLM extensions
    top_k: Int64 | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False
    min_tokens: Int64 = 0
    stop_token_ids: list[Int64] | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    prompt_logprobs: Int64 | None = None
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputsBody | None = None  # vLLM
    guided_json: dict[str, Any] | bool | str | None = None  # vLLM's older names
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    truncate_prompt_tokens: Int64 | None = Field(default=None, ge=-1)  # vLLM: keep the last N tokens (-1: the context)
    # Kairos extensions
    slo: SLOBody | None = None
    priority: Int64 | None = None

    def structured_output(self) -> tuple[str, StructuredOutput] | None:
        """(the field it came from, the constraint) of the request, if it asks for one; raises
        ``ValueError`` naming the field first."""
        given = {}
        rf = self.response_format
        if rf is not None and rf.type != "text":
            if rf.type == "json_object":
                given["response_format"] = dict(json_object=True)
            elif rf.json_schema is None or rf.json_schema.schema_ is None:
                raise ValueError("response_format.json_schema.schema is required when type is \"json_schema\"")
            else:
                given["response_format"] = dict(json=_schema_text(rf.json_schema.schema_))
        so = self.structured_outputs
        if so is not None:
            fields = so.model_dump(exclude_none=True, by_alias=True)
            if "json" in fields:
                fields["json"] = _schema_text(fields["json"])
            given["structured_outputs"] = fields
        for name, key in (("guided_json", "json"), ("guided_regex", "regex"), ("guided_choice", "choice"),
                          ("guided_grammar", "grammar")):
            value = getattr(self, name)
            if value is not None:
                given[name] = {key: _schema_text(value) if key == "json" else value}
        if not given:
            return None
        if len(given) > 1:
            raise ValueError(f"{' and '.join(given)}: give at most one way to constrain the output")
        (source, fields), = given.items()
        try:
            return source, StructuredOutput(**fields)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    def _sampling(self, max_tokens: int, logprobs: int | None, structured, prompt_logprobs: int | None = None
                  ) -> SamplingParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        if structured is ...:
            given = self.structured_output()
            structured = given[1] if given else None
        return SamplingParams(
            n=self.n, max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0, min_p=self.min_p or 0.0, seed=self.seed,
            repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            stop=stop, stop_token_ids=tuple(self.stop_token_ids or ()), ignore_eos=self.ignore_eos,
            logprobs=logprobs, include_stop_str_in_output=self.include_stop_str_in_output,
            skip_special_tokens=self.skip_special_tokens, logit_bias=self.logit_bias or {},
            min_tokens=self.min_tokens, structured=structured,
            prompt_logprobs=self.prompt_logprobs if self.prompt_logprobs is not None else prompt_logprobs,
        )


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: Int64 | None = None
    echo: bool = False

    @property
    def echo_only(self) -> bool:
        """``echo`` with ``max_tokens`` 0, as vLLM's: the prompt back (with its logprobs), nothing generated."""
        return self.echo and self.max_tokens == 0

    def sampling_params(self, default_max_tokens: int, structured: StructuredOutput | None | EllipsisType = ...
                        ) -> SamplingParams:
        """``structured``: the constraint as the API prepared it (default: built from the request).
        With ``echo``, ``logprobs`` covers the prompt's tokens too (``prompt_logprobs``)."""
        max_tokens = 1 if self.echo_only else self.max_tokens if self.max_tokens is not None else 16
        return self._sampling(max_tokens, self.logprobs, structured, self.logprobs if self.echo else None)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[ToolCallIn] | None = None  # an assistant's
    tool_call_id: str | None = None  # a tool result's


class _ChatTemplateFields(BaseModel):
    """How messages become a prompt (vLLM's fields, for chat requests and /tokenize)."""

    add_generation_prompt: bool = True
    continue_final_message: bool = False  # the last (assistant) message is left open, to be continued
    chat_template_kwargs: dict[str, Any] | None = None  # more variables for the template (e.g. enable_thinking)


class ChatCompletionRequest(_SamplingFields, _ChatTemplateFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Int64 | None = None
    logprobs: bool = False
    top_logprobs: Int64 | None = None
    add_special_tokens: bool = False  # (the template adds the model's own)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True

    def tool_plan(self, parser: str | None = None) -> ToolPlan | None:
        """What the tools ask of the output; ``parser``: the server's ``--tool-call-parser``."""
        return plan_tools(self.tools, self.tool_choice, self.parallel_tool_calls, parser)

    def structured_output(self) -> tuple[str, StructuredOutput] | None:
        given = super().structured_output()
        tp = constraint(self.tools, self.tool_choice, self.parallel_tool_calls)
        if tp is None:
            return given
        if given is not None:
            raise ValueError(f"tool_choice and {given[0]}: give at most one way to constrain the output")
        return "tool_choice", tp.structured

    def sampling_params(self, default_max_tokens: int, structured: StructuredOutput | None | EllipsisType = ...
                        ) -> SamplingParams:
        """``structured``: the constraint as the API prepared it (default: built from the request)."""
        max_tokens = next((m for m in (self.max_completion_tokens, self.max_tokens) if m is not None), default_max_tokens)
        return self._sampling(max_tokens, (self.top_logprobs or 0) if self.logprobs else None, structured)


def conversation(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as a chat template takes them (tool calls and results included)."""
    out = []
    for i, m in enumerate(messages):
        content = m.content
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            texts = [p.get("text") for p in content if p.get("type") == "text"]
            if not all(isinstance(t, str) for t in texts):
                raise ValueError(f"messages.{i}.content: a text part's text must be a string")
            content = "".join(texts)
        turn = {"role": "system" if m.role == "developer" else m.role, "content": content or ""}
        if m.tool_calls:
            turn["tool_calls"] = [template_call(c) for c in m.tool_calls]
        if m.tool_call_id is not None:
            turn["tool_call_id"] = m.tool_call_id
        out.append(turn)
    return out


class TokenizeRequest(_ChatTemplateFields):
    """vLLM's ``POST /tokenize``: a ``prompt``, or chat ``messages`` rendered by the template."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    add_special_tokens: bool | None = None  # default: True for a prompt, False for messages (the template adds them)
    return_token_strs: bool = False
    tools: list[Tool] | None = None  # (to the chat template, as a chat request's)


class DetokenizeRequest(BaseModel):
    model: str | None = None
    tokens: list[int]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())
