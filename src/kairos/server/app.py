"""The FastAPI application: its routes (``routes_openai``, ``routes_misc``), the middleware in
front of them, and OpenAI-style errors for bad input."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException as StarletteHTTPException

import kairos
from kairos.server import openapi_doc, routes_misc, routes_openai
from kairos.server.client import EngineClient
from kairos.server.config import ServerConfig
from kairos.server.metrics import ServerMetrics
from kairos.server.middleware import ApiKey, BodyLimit, error
from kairos.server.serving import APIError, Generator
from kairos.server.state import ServerState
from kairos.server.validate import RequestChecks


def build_app(client: EngineClient, tokenizer, model_name: str, config: ServerConfig) -> FastAPI:
    app = FastAPI(title="Kairos", version=kairos.__version__)
    metrics = ServerMetrics(model_name)
    app.state.kairos = ServerState(client, tokenizer, model_name, config, metrics,
                                   Generator(client, tokenizer, metrics, config.max_pending, config.request_timeout),
                                   RequestChecks(client, tokenizer, model_name, config))

    install_common(app, config.max_body_bytes, config.api_key, config.allowed_origins)
    app.include_router(routes_openai.router)
    app.include_router(routes_misc.router)
    openapi_doc.install(app, bool(config.api_key))
    return app


def install_common(app: FastAPI, max_body_bytes: int, api_key: str | None, allowed_origins: tuple[str, ...]) -> None:
    """What every Kairos HTTP front (a server, a router) answers alike: OpenAI-style errors for
    bad input, the body limit, the API key, CORS."""
    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError):
        return error(e.status, e.message, e.type, e.param, e.code)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        if first.get("type") == "json_invalid":
            return error(400, f"request body is not valid JSON: {first.get('ctx', {}).get('error', '')}".rstrip(": "))
        return error(400, f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid value')}", param=".".join(loc) or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException):
        response = error(e.status_code, str(e.detail), "not_found_error" if e.status_code == 404 else "invalid_request_error")
        response.headers.update(e.headers or {})  # (a 405's Allow)
        return response

    app.add_middleware(BodyLimit, limit=max_body_bytes)
    if api_key:
        app.add_middleware(ApiKey, key=api_key)  # (added after: runs before, ahead of any body read)
    if allowed_origins:  # outermost: its headers go on every answer, a 401 or 413 too
        app.add_middleware(CORSMiddleware, allow_origins=list(allowed_origins), allow_methods=["*"],
                           allow_headers=["*"])
