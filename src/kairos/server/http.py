"""The HTTP connection's own limits, before any route runs: the size of a request's head (its
line and headers: 431 past the limit, read no further) and how long a client may take to send
the head and then the body (408 and the connection closed). uvicorn has neither for httptools,
so a client sending a header a byte a second, or a body shorter than its Content-Length, would
hold a connection for ever."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class ConnectionLimits:
    max_head_bytes: int
    head_timeout: float
    body_timeout: float


def protocol(limits: ConnectionLimits) -> type[asyncio.Protocol] | str:
    """uvicorn's ``http`` setting: httptools' protocol with ``limits``, or "h11" where httptools
    is missing (there the head's size is bounded by uvicorn's own setting, without timeouts)."""
    try:
        import httptools
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return "h11"

    class HeadTooLarge(Exception):
        pass

    class Limited(HttpToolsProtocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._head = 0  # bytes of the head's parts the parser handed over
            self._raw = 0  # bytes received while a head is being read (a header without an end is in no part yet)
            self._in_head = True
            self._timer = self.loop.call_later(limits.head_timeout, self._too_slow, "its request")

        def connection_lost(self, exc) -> None:
            self._stop_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            # (uvicorn's, but for a head too large: 431, not its 400 for a parse error)
            self._unset_keepalive_if_required()
            if self._in_head:
                self._raw += len(data)
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserCallbackError as e:
                if isinstance(e.__context__, HeadTooLarge):
                    self._head_too_large()
                    return
                self.send_400_response("Invalid HTTP request received.")
            except httptools.HttpParserError:
                self.send_400_response("Invalid HTTP request received.")
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
            else:  # (still in a head after all it sent: a header without an end counts too)
                if self._in_head and self._raw > limits.max_head_bytes:
                    self._head_too_large()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head, self._in_head = 0, True
            if self._timer is None:  # (a later request of a kept-alive connection)
                self._timer = self.loop.call_later(limits.head_timeout, self._too_slow, "its request")

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head, self._raw = False, 0
            self._stop_timer()
            self._timer = self.loop.call_later(limits.body_timeout, self._too_slow, "its body")
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._stop_timer()
            self._in_head = True  # (the next request's head, if the connection is kept)
            super().on_message_complete()

        def _count(self, n: int) -> None:
            self._head += n
            if self._head > limits.max_head_bytes:
                raise HeadTooLarge

        def _stop_timer(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _head_too_large(self) -> None:
            if self.cycle is not None and not self.cycle.response_complete:
                self.transport.close()  # (an answer to a request before it is on its way: a 431 would land in it)
            else:
                self._answer(431, f"request line and headers exceed {limits.max_head_bytes} bytes")

        def _too_slow(self, what: str) -> None:
            self._timer = None
            if what == "its body" and self.pipeline:  # (queued behind an answer: uvicorn reads nothing meanwhile)
                self._timer = self.loop.call_later(limits.body_timeout, self._too_slow, what)
                return
            c = self.cycle  # (for a head: the request before it, if any; for a body: its own)
            if c is not None and (c.response_started if what == "its body" else not c.response_complete):
                # an answer is on its way (a 401 before the body, or the answer to a request
                # pipelined before this head): a 408 would be read as part of it, so only close
                self.transport.close()
            else:
                seconds = limits.head_timeout if what == "its request" else limits.body_timeout
                self._answer(408, f"the client did not send {what} within {seconds:g} s")

        def _answer(self, status: int, message: str) -> None:
            if self.transport.is_closing():
                return
            body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                         "code": None}}).encode()
            reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
            self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                                 b"connection: close\r\n\r\n%s" % (status, reason, len(body), body))
            self.transport.close()

    return Limited
