"""Parsers of models' own tool-call formats, for ``tool_choice: "auto"`` (``--tool-call-parser``).

A parser reads a finished output into (content, calls), each call a ``(name, arguments JSON)``
whose name is a string and whose arguments are an object; anything else leaves the output text.
While streaming, :class:`AutoStream` sends text as content until it may be the start of a tool
call, then holds the rest and parses it at the end (vLLM streams the arguments as they come; this
sends each call whole, which every OpenAI client accepts).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Protocol

_PYTHON_TAG = "<|python_tag|>"


class ToolParser(Protocol):
    # where tool calls may begin: content after this is held while streaming
    start: str

    def parse(self, text: str) -> tuple[str | None, list[tuple[str, str]]]: ...


_NOT_CALLS = (ValueError, KeyError, TypeError, RecursionError)  # (json.loads of a 3,000-deep array recurses)


def _call(c, key: str) -> tuple[str, str]:
    """(name, arguments as JSON) of a parsed call; TypeError if it is not one."""
    args = c.get(key, {}) if isinstance(c, dict) else None
    if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not isinstance(args, dict):
        raise TypeError("not a call")
    return c["name"], json.dumps(args, ensure_ascii=False)


class Hermes:
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (Hermes, Qwen2.5, Qwen3), after
    optional text."""

    start = "<tool_call>"
    _CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)

    def parse(self, text: str) -> tuple[str | None, list[tuple[str, str]]]:
        if self.start not in text:
            return text, []
        calls = []
        for body in self._CALL.findall(text):
            try:
                calls.append(_call(json.loads(body), "arguments"))
            except _NOT_CALLS:
                return text, []  # (not the format after all: all of it is text)
        content = text[: text.index(self.start)]
        return (content if content.strip() else None), calls


class Llama3Json:
    """Llama 3.x's JSON calls: ``{"name": ..., "parameters": {...}}``, several joined by ``;``,
    the whole output (after an optional ``<|python_tag|>``)."""

    start = "{"

    def parse(self, text: str) -> tuple[str | None, list[tuple[str, str]]]:
        body = text.strip().removeprefix(_PYTHON_TAG).strip()
        if not body.startswith("{"):
            return text, []
        calls = []
        decoder = json.JSONDecoder()
        i = 0
        try:
            while i < len(body):
                c, i = decoder.raw_decode(body, i)
                calls.append(_call(c, "parameters" if isinstance(c, dict) and "parameters" in c else "arguments"))
                i = len(body) - len(body[i:].lstrip().removeprefix(";").lstrip())
        except _NOT_CALLS:
            return text, []
        return None, calls


PARSERS: dict[str, type] = {"hermes": Hermes, "llama3_json": Llama3Json}


class AutoStream:
    """Streamed content of an output that may hold tool calls: ``feed`` returns the content that
    is safe to send; ``finish`` parses what was held (``parse``: the parser's, checked)."""

    def __init__(self, parser: ToolParser, parse: Callable[[str], tuple[str | None, list[tuple[str, str]]]]):
        self.parser = parser
        self.parse = parse
        # llama3_json: calls are the whole output, so only a start at the beginning counts
        self.leading_only = isinstance(parser, Llama3Json)
        self.sent = 0  # characters of the text sent as content
        self.holding = False

    def feed(self, text: str) -> str:
        if self.holding:
            return ""
        start = self.parser.start
        if self.leading_only:
            if self.sent:  # (the output began as text: it stays text)
                out, self.sent = text[self.sent:], len(text)
                return out
            stripped = text.lstrip()
            if not stripped or _PYTHON_TAG.startswith(stripped):
                return ""  # (undecided yet)
            if stripped.startswith((start, _PYTHON_TAG)):
                self.holding = True
                return ""
            out, self.sent = text, len(text)
            return out
        i = text.find(start, self.sent)
        if i >= 0:
            self.holding = True
            out, self.sent = text[self.sent:i], i
            return out
        # hold back a tail that may be the start of a tag
        keep = next((k for k in range(min(len(start) - 1, len(text) - self.sent), 0, -1)
                     if start.startswith(text[len(text) - k:])), 0)
        out, self.sent = text[self.sent: len(text) - keep], len(text) - keep
        return out

    def finish(self, text: str) -> tuple[str, list[tuple[str, str]]]:
        """(the content not sent yet, the calls) at the end of the output."""
        content, calls = self.parse(text)
        if not calls:
            return text[self.sent:], []
        return (content or "")[self.sent:], calls
