"""Chat messages -> a prompt, through the server's ``--chat-template`` or the model's own."""

from __future__ import annotations

import inspect
from pathlib import Path

from kairos.server.config import is_template
from kairos.server.protocol import ChatCompletionRequest, TokenizeRequest, conversation
from kairos.server.serving import APIError


def load_template(given: str | None) -> str | None:
    """``--chat-template`` (checked by ``ServerConfig``): a file's text, or the template itself."""
    if given is None or is_template(given):
        return given
    return Path(given).expanduser().read_text()


class ChatRenderer:
    """Renders a request's messages (``render``), raising :class:`APIError` (a 400) for what the
    caller got wrong: no template, clashing options, a template that fails on the messages."""

    def __init__(self, tokenizer, template: str | None):
        self.tokenizer = tokenizer
        self.template = template
        # (chat_template_kwargs may not set these: they would clash with the call's own arguments)
        self.reserved = set(inspect.signature(tokenizer.apply_chat_template).parameters) if tokenizer else set()

    def render(self, req: ChatCompletionRequest | TokenizeRequest) -> str:
        if self.template is None and not getattr(self.tokenizer, "chat_template", None):
            raise APIError(400, "this model has no chat template (start the server with --chat-template); "
                                "use /v1/completions", param="messages")
        if req.continue_final_message and req.add_generation_prompt:
            raise APIError(400, "continue_final_message and add_generation_prompt cannot both be true",
                           param="continue_final_message")
        kwargs = req.chat_template_kwargs or {}
        if self.reserved & set(kwargs):
            raise APIError(400, f"chat_template_kwargs must not set {', '.join(sorted(self.reserved & set(kwargs)))}",
                           param="chat_template_kwargs")
        try:
            turns = conversation(req.messages)
        except ValueError as e:
            raise APIError(400, str(e), param="messages") from None
        tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
        try:
            return self.tokenizer.apply_chat_template(
                turns, tools=tools, tokenize=False, chat_template=self.template,
                add_generation_prompt=req.add_generation_prompt, continue_final_message=req.continue_final_message,
                **kwargs)
        except Exception as e:  # template errors are the caller's messages' fault
            raise APIError(400, f"messages could not be rendered by the chat template: {e}", param="messages") from None
