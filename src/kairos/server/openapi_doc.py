"""The server's OpenAPI document as the server answers: its errors are 400s with OpenAI's error
body (FastAPI would document 422 and its own validation body), each route lists the statuses it
can answer, streams are ``text/event-stream`` and metrics plain text."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from kairos.server.middleware import guarded

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}
WHY = {400: "bad input", 401: "no or a wrong API key", 404: "no such model", 413: "body too large",
       429: "SLO cannot be met", 503: "engine unavailable, stalled or at capacity", 504: "request timed out"}
STREAMS = ("/v1/completions", "/v1/chat/completions")


def install(app: FastAPI, api_key: bool) -> None:
    """Make ``app.openapi()`` describe what ``app`` answers (``api_key``: guarded routes want one)."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = document(app, api_key)
        return app.openapi_schema

    app.openapi = openapi


def document(app: FastAPI, api_key: bool) -> dict:
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas["ErrorResponse"] = ERROR
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            responses = op["responses"]
            responses.pop("422", None)
            codes = [503] if path == "/health" else []
            if method == "post":
                codes = [400, 404, 413, 503] + ([429, 504] if path.startswith("/v1") else [])
            if api_key and guarded(path):
                codes.append(401)
            for code in sorted(codes):
                responses[str(code)] = {"description": WHY[code], "content": error}
            if path in STREAMS:
                responses["200"]["content"]["text/event-stream"] = {"schema": {"type": "string"}}
            if path == "/stats/stream":  # (server-sent events only)
                responses["200"]["content"] = {"text/event-stream": {"schema": {"type": "object"}}}
            if path == "/metrics":
                responses["200"]["content"] = {"text/plain": {"schema": {"type": "string"}}}
    return doc
