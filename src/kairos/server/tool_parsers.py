"""Parsers of models' own tool-call formats, for ``tool_choice: "auto"`` (``--tool-call-parser``).

A parser reads a finished output into (content, calls), each call a ``(name, arguments JSON)``.
While streaming, :class:`AutoStream` sends text as content until it may be the start of a tool
call, then holds the rest and parses it at the end (vLLM streams the arguments as they come; this
sends each call whole, which every OpenAI client accepts).
"""

from __future__ import annotations

import json
import re
from typing import Protocol


class ToolParser(Protocol):
    # where tool calls may begin: content after this is held while streaming
    start: str

    def parse(self, text: str) -> tuple[str | None, list[tuple[str, str]]]: ...


def _arguments(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


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
                c = json.loads(body)
                calls.append((c["name"], _arguments(c.get("arguments", {}))))
            except (ValueError, KeyError, TypeError):
                return text, []  # (not the format after all: all of it is text)
        content = text[: text.index(self.start)]
        return (content if content.strip() else None), calls


class Llama3Json:
    """Llama 3.x's JSON calls: ``{"name": ..., "parameters": {...}}``, several joined by ``;``,
    the whole output (after an optional ``<|python_tag|>``)."""

    start = "{"

    def parse(self, text: str) -> tuple[str | None, list[tuple[str, str]]]:
        body = text.strip().removeprefix("<|python_tag|>").strip()
        if not body.startswith("{"):
            return text, []
        calls = []
        decoder = json.JSONDecoder()
        i = 0
        try:
            while i < len(body):
                c, i = decoder.raw_decode(body, i)
                calls.append((c["name"], _arguments(c.get("parameters", c.get("arguments", {})))))
                i = len(body) - len(body[i:].lstrip().removeprefix(";").lstrip())
        except (ValueError, KeyError, TypeError):
            return text, []
        return None, calls


PARSERS: dict[str, type] = {"hermes": Hermes, "llama3_json": Llama3Json}


class AutoStream:
    """Streamed content of an output that may hold tool calls: ``feed`` returns the content that
    is safe to send; ``finish`` parses what was held."""

    def __init__(self, parser: ToolParser, leading_only: bool):
        self.parser = parser
        # llama3_json: calls are the whole output, so only a start at the beginning counts
        self.leading_only = leading_only
        self.sent = 0  # characters of the text sent as content
        self.holding = False

    def feed(self, text: str) -> str:
        if self.holding:
            return ""
        start = self.parser.start
        if self.leading_only:
            stripped = text.lstrip()
            if not stripped:
                return ""
            if stripped.startswith(start) or start.startswith(stripped) or "<|python_tag|>".startswith(stripped) \
                    or stripped.startswith("<|python_tag|>"):
                self.holding = True
                return ""
            out, self.sent = text[self.sent:], len(text)
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
        content, calls = self.parser.parse(text)
        if not calls:
            return text[self.sent:], []
        return (content or "")[self.sent:], calls
