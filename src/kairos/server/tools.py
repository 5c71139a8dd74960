"""Tool calls in chat completions: ``tool_choice`` "required" or a named function, as vLLM does
them without a model-specific parser: the output is constrained to the tools' JSON (structured
output), then read back into OpenAI ``tool_calls``.

- a named function: the output is that function's arguments (its ``parameters`` schema);
  ``finish_reason`` stays "stop", as OpenAI's for a forced function.
- "required": the output is a JSON array of ``{"name", "parameters"}`` (one item at most when
  ``parallel_tool_calls`` is false); ``finish_reason`` is "tool_calls".
- "none": the tools go to the chat template and the output is plain text.
- "auto" (OpenAI's default when tools are given): the output is free, and the parser of the
  model's own tool-call format named by ``--tool-call-parser`` (``tool_parsers``) finds the calls
  in it; without one, "auto" is a 400 that says what works.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from kairos.server.tool_parsers import PARSERS, AutoStream, ToolParser
from kairos.wire.sampling_params import StructuredOutput

_NO_PARAMETERS = {"type": "object", "properties": {}}


class FunctionDef(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _an_object(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and v.get("type", "object") != "object":  # (OpenAI's arguments are an object)
            raise ValueError("must be the JSON schema of an object")
        return v


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDef


class CalledFunction(BaseModel):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCallIn(BaseModel):
    """A call in an assistant message of the history."""

    id: str | None = None
    type: Literal["function"] = "function"
    function: CalledFunction


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


@dataclass(frozen=True)
class ToolPlan:
    """What a request's tools ask of its output: ``structured`` constrains it and ``name`` is the
    forced function (None for "required"), or ``parser`` finds the calls ("auto")."""

    structured: StructuredOutput | None
    name: str | None
    parser: ToolParser | None = None
    names: frozenset[str] = frozenset()  # the tools' ("auto": a call to another is text)
    parallel: bool = True  # ("auto": without it, the first call only, as vLLM)


def plan(tools: list[Tool] | None, choice: ToolChoice | None, parallel: bool,
         parser: str | None = None) -> ToolPlan | None:
    """What a request's tools ask, or None for plain text; raises ``ValueError`` that names
    ``tool_choice`` or ``tools`` first. ``parser``: the server's ``--tool-call-parser``."""
    if choice is None:
        choice = "auto" if tools else "none"
    if tools and len({t.function.name for t in tools}) != len(tools):
        raise ValueError("tools must have distinct function names")
    if choice == "auto" and tools:
        if parser is None:
            raise ValueError('tool_choice "auto" needs a parser of this model\'s tool-call format: start the '
                             'server with --tool-call-parser (' + ", ".join(PARSERS) + '), or use "required", '
                             'a named function, or "none"')
        return ToolPlan(None, None, PARSERS[parser](), frozenset(t.function.name for t in tools), parallel)
    return constraint(tools, choice, parallel)


def constraint(tools: list[Tool] | None, choice: ToolChoice | None, parallel: bool) -> ToolPlan | None:
    """The constrained plan of "required" or a named function; None otherwise."""
    if choice is None or choice in ("none", "auto"):
        return None
    if not tools:
        raise ValueError(f"tool_choice {_shown(choice)} needs tools")
    by_name = {t.function.name: t.function for t in tools}
    if len(by_name) != len(tools):
        raise ValueError("tools must have distinct function names")
    if choice == "required":
        items = [{"type": "object", "properties": {"name": {"type": "string", "enum": [f.name]},
                                                   "parameters": f.parameters or _NO_PARAMETERS},
                  "required": ["name", "parameters"], "additionalProperties": False} for f in by_name.values()]
        schema = {"type": "array", "minItems": 1, "items": {"anyOf": items}}
        if not parallel:
            schema["maxItems"] = 1
        return ToolPlan(StructuredOutput(json=json.dumps(schema)), None)
    f = by_name.get(choice.function.name)
    if f is None:
        raise ValueError(f"tool_choice names function {choice.function.name!r}, which is not among the tools")
    return ToolPlan(StructuredOutput(json=json.dumps(f.parameters or _NO_PARAMETERS)), f.name)


def _shown(choice: ToolChoice) -> str:
    return json.dumps(choice) if isinstance(choice, str) else f"function {choice.function.name!r}"


def call(name: str, arguments: str) -> dict:
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {"name": name, "arguments": arguments}}


def read_calls(tp: ToolPlan, text: str) -> list[dict] | None:
    """The tool calls in a finished output. A named function's is its text, whole or not (cut by
    max_tokens: as its stream, and vLLM's); "required" calls: None unless they are whole JSON."""
    if tp.name is not None:
        return [call(tp.name, text)]
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return [call(c["name"], json.dumps(c["parameters"], ensure_ascii=False)) for c in value]


def parsed(tp: ToolPlan, text: str) -> tuple[str | None, list[tuple[str, str]]]:
    """("auto") The parser's (content, calls), where every call names one of the tools; else the
    output is text."""
    content, found = tp.parser.parse(text)
    if not all(name in tp.names for name, _ in found):
        return text, []
    return content, found if tp.parallel else found[:1]


def message(tp: ToolPlan | None, text: str, finish_reason: str | None) -> tuple[dict, str | None]:
    """A finished choice's ``message`` and ``finish_reason``."""
    if tp is not None and tp.parser is not None:
        content, found = parsed(tp, text)
        if not found:
            return {"role": "assistant", "content": text}, finish_reason
        return {"role": "assistant", "content": content, "tool_calls": [call(n, a) for n, a in found]}, "tool_calls"
    calls = read_calls(tp, text) if tp is not None else None
    if calls is None:
        return {"role": "assistant", "content": text}, finish_reason
    return ({"role": "assistant", "content": None, "tool_calls": calls},
            finish_reason if tp.name is not None else "tool_calls")


class ToolStream:
    """Deltas of one streamed choice: a named function's arguments go out as they come (the
    first delta with the call's id and name); "required" calls go out whole at the end."""

    def __init__(self, tp: ToolPlan):
        self.tp = tp
        self.id = call("", "")["id"]
        self.started = False
        self.auto = AutoStream(tp.parser, lambda text: parsed(tp, text)) if tp.parser is not None else None

    def delta(self, piece: str, text: str, finish_reason: str | None) -> tuple[dict, str | None]:
        """(the delta, the finish_reason) for new text ``piece``; ``text`` is all of it so far."""
        if self.auto is not None:
            content = self.auto.feed(text)
            if finish_reason is None:
                return ({"content": content} if content else {}), None
            rest, found = self.auto.finish(text)
            out: dict[str, Any] = {"content": content + rest} if content + rest else {}
            if not found:
                return out, finish_reason
            out["tool_calls"] = [{"index": i, **call(n, a)} for i, (n, a) in enumerate(found)]
            return out, "tool_calls"
        if self.tp.name is not None:
            out: dict[str, Any] = {"index": 0, "function": {"arguments": piece}}
            if not self.started:
                out.update(id=self.id, type="function")
                out["function"] = {"name": self.tp.name, "arguments": piece}
                self.started = True
            return {"tool_calls": [out]}, finish_reason
        if finish_reason is None:
            return {}, None
        calls = read_calls(self.tp, text)
        if calls is None:  # (cut short: what there is, as text)
            return {"content": text}, finish_reason
        return {"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]}, "tool_calls"


def template_call(c: ToolCallIn) -> dict[str, Any]:
    """A call of the history as chat templates read it: ``arguments`` as an object when it is
    JSON (as vLLM passes it), else the string it is."""
    args = c.function.arguments
    if isinstance(args, str):
        with contextlib.suppress(ValueError, RecursionError):
            args = json.loads(args)
    out = {"type": "function", "function": {"name": c.function.name, "arguments": args}}
    return out if c.id is None else {"id": c.id, **out}
