"""Plain-ASGI middleware of the API server, and the OpenAI error body they and the routes answer with.

Plain ASGI, not ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware relays every chunk
of a streamed response through a memory stream and a task of its own, which cost the API
process ~a third of its CPU time per streamed token (benchmarks/api_stream.py)."""

from __future__ import annotations

import hmac

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


def error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None):
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


class BodyLimit:
    """413 for a request whose body is over ``limit`` bytes (by its Content-Length, or counted as
    a chunked body is read)."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.limit:
                response = error(413, f"request body of {length.decode()} bytes exceeds the limit of {self.limit}")
                await response(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        received = 0

        async def counted():  # a chunked body: counted as it is read (the route's error handler answers)
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise StarletteHTTPException(413, f"request body of over {self.limit} bytes exceeds the limit of {self.limit}")
            return message

        await self.app(scope, counted, send)


def guarded(path: str) -> bool:
    """Whether ``path`` wants the API key: the OpenAI routes and the tokenizer's (they spend the
    server's CPU on what a caller sends), the admin routes, and the state stream (its prefix-cache hashes would tell
    whether a guessed prompt was sent); health, metrics, version and stats stay open to probes
    and scrapers, as vLLM's."""
    return path.startswith(("/v1", "/admin")) or path in ("/tokenize", "/detokenize", "/stats/stream")


class ApiKey:
    """401 for a request to a :func:`guarded` route without ``Authorization: Bearer <key>`` (one
    such header: two are a 400), as vLLM's ``--api-key``. A CORS middleware, if one comes, must
    wrap this one."""

    def __init__(self, app, key: str):
        self.app = app
        self.expected = f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and guarded(scope["path"]) and scope["method"] != "OPTIONS":
            given = [v for k, v in scope["headers"] if k == b"authorization"]
            if len(given) > 1:  # (which one counts would be the server's guess: refused)
                await error(400, "more than one Authorization header")(scope, receive, send)
                return
            given = given[0] if given else b""
            if not hmac.compare_digest(given, self.expected):  # constant time: no key guessed byte by byte
                message = ("Incorrect API key provided." if given else
                           "You didn't provide an API key. Pass it as 'Authorization: Bearer YOUR_KEY'.")
                await error(401, message, code="invalid_api_key")(scope, receive, send)
                return
        await self.app(scope, receive, send)
