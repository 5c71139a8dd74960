"""What the routes of one server share (``app.state.kairos``)."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from kairos.server.client import EngineClient
from kairos.server.config import ServerConfig
from kairos.server.metrics import ServerMetrics
from kairos.server.serving import Generator
from kairos.server.validate import RequestChecks


@dataclass(frozen=True)
class ServerState:
    client: EngineClient
    tokenizer: object  # a transformers tokenizer, or None (token ids only)
    model_name: str
    config: ServerConfig
    metrics: ServerMetrics
    gen: Generator
    checks: RequestChecks


def state(request: Request) -> ServerState:
    return request.app.state.kairos
