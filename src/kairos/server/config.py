"""Configuration of the HTTP server (the engine's own is in kairos.config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kairos.server.tool_parsers import PARSERS


def is_template(given: str) -> bool:
    """Whether a ``--chat-template`` value is the template's text (else it names a file)."""
    return "{{" in given or "{%" in given


def check_template(text: str) -> None:
    """Raise ``ValueError`` for a chat template that Jinja cannot compile (as transformers
    compiles it: its extensions and filters), so that a bad one fails at start, not per chat."""
    from jinja2 import TemplateError

    try:  # (transformers' own compile: a private name, so a version without it skips the check)
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:
        return
    try:
        _compile_jinja_template(text)
    except TemplateError as e:
        raise ValueError(f"chat_template: not a valid Jinja template: {e} (line {getattr(e, 'lineno', '?')})") from None


def _is_file(name: str) -> bool:
    try:
        return Path(name).expanduser().is_file()
    except OSError:  # (a name too long to be a path)
        return False


@dataclass(frozen=True)
class ServerConfig:
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8000, metadata={"help": "port to listen on"})
    served_model_name: str | None = field(default=None, metadata={"help": "model name in the API (default: from the model file)"})
    max_pending: int = field(default=1024, metadata={"help": "sequences in flight (a prompt with n counts n) before new requests get 503; a request of more gets 400"})
    max_body_bytes: int = field(default=8 << 20, metadata={"help": "largest request body accepted"})
    default_max_tokens: int = field(default=1024, metadata={"help": "chat max_tokens when the request sets none (capped by the context)"})
    allowed_origins: tuple[str, ...] = field(default=(), metadata={"help": "a web origin whose pages may call this server from a browser (CORS; repeatable, '*' for any): none by default, since a page on any site could otherwise read a local server's answers"})
    tool_call_parser: str | None = field(default=None, metadata={"help": "the model's tool-call format, for tool_choice \"auto\": hermes (Hermes, Qwen2.5, Qwen3) or llama3_json (Llama 3.x); without one, \"auto\" is a 400 (\"required\" and named functions need none)"})
    chat_template: str | None = field(default=None, metadata={"help": "a Jinja chat template, or a file holding one, for a model without one or in place of its own (vLLM's --chat-template)"})
    max_header_bytes: int = field(default=64 << 10, metadata={"help": "largest request line and headers accepted (431 past it)"})
    header_timeout: float = field(default=10.0, metadata={"help": "seconds a client may take to send a request's line and headers (408, connection closed)"})
    body_timeout: float = field(default=60.0, metadata={"help": "seconds a client may take to send a request's body once its headers are in (408, connection closed)"})
    max_connections: int = field(default=2048, metadata={"help": "open connections at most: a request on one more gets 503 (uvicorn's limit_concurrency)"})
    engine_stall_timeout: float = field(default=5.0, metadata={"help": "seconds without a word from the engine process (a heartbeat each second, from a thread of its own) after which /health answers 503 engine_stalled"})
    engine_step_timeout: float = field(default=120.0, metadata={"help": "seconds the engine's loop may spend in one step before /health answers 503 engine_stalled (a step that never returns: a hung kernel)"})
    drain_grace: float = field(default=30.0, metadata={"help": "seconds SIGTERM (or POST /admin/drain) leaves the requests in flight to finish while new ones get 503 draining; then what is left ends with an error and the server exits 0"})
    engine_restarts: int = field(default=3, metadata={"help": "times the engine process is started anew after it dies, within 10 minutes (requests meanwhile get 503 engine_dead); past that the server exits 1"})
    request_timeout: float | None = field(default=None, metadata={"help": "seconds a request may take from arrival to its last token; past it the server answers 504 (or ends the stream with that error) and aborts it (default: none)"})
    api_key: str | None = field(default=None, repr=False, metadata={"help": "require 'Authorization: Bearer KEY' on the /v1 routes and on /tokenize and /detokenize, as vLLM's (health, metrics, version, stats stay open; default: $KAIROS_API_KEY if set, else none)"})

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.max_pending < 1 or self.max_body_bytes < 1 or self.default_max_tokens < 1:
            raise ValueError("max_pending, max_body_bytes and default_max_tokens must be >= 1")
        if self.max_header_bytes < 1024 or self.max_connections < 1:
            raise ValueError("max_header_bytes must be >= 1024 and max_connections >= 1")
        if not (self.header_timeout > 0 and self.body_timeout > 0):
            raise ValueError("header_timeout and body_timeout must be > 0 s")
        if not self.engine_stall_timeout > 1.0:
            raise ValueError(f"engine_stall_timeout must be > 1 s (the engine's heartbeat), got {self.engine_stall_timeout}")
        if not self.engine_step_timeout > 1.0:
            raise ValueError(f"engine_step_timeout must be > 1 s (the engine's heartbeat), got {self.engine_step_timeout}")
        if not self.drain_grace >= 0:
            raise ValueError(f"drain_grace must be >= 0 s, got {self.drain_grace}")
        if self.engine_restarts < 0:
            raise ValueError(f"engine_restarts must be >= 0, got {self.engine_restarts}")
        if self.request_timeout is not None and not self.request_timeout > 0:
            raise ValueError(f"request_timeout must be > 0 s, got {self.request_timeout}")
        if self.tool_call_parser is not None and self.tool_call_parser not in PARSERS:
            raise ValueError(f"tool_call_parser must be one of {', '.join(PARSERS)}, got {self.tool_call_parser!r}")
        for origin in self.allowed_origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(f"allowed_origins: {origin!r} is not '*' or an http(s):// origin")
        if self.chat_template is not None and not (is_template(self.chat_template) or _is_file(self.chat_template)):
            raise ValueError(f"chat_template: {self.chat_template!r} is neither a file nor a Jinja template")
        if self.chat_template is not None:
            check_template(self.chat_template if is_template(self.chat_template)
                           else Path(self.chat_template).expanduser().read_text())
        if self.api_key is not None and not (self.api_key.isascii() and self.api_key.isprintable()
                                             and self.api_key and " " not in self.api_key):
            raise ValueError("api_key must be non-empty printable ASCII without spaces (it travels in a header)")
