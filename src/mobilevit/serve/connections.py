"""Connections under uvicorn: a deadline for a request's headers, a cap on open connections, protocol errors answered
as ``{"error": ...}`` JSON, and accept() failures logged at a bounded rate.

uvicorn's h11 protocol (:class:`uvicorn.protocols.http.h11_impl.H11Protocol`) starts no timer until a first response
is sent, so a client that sends one header byte now and then holds its connection, and its file descriptor, for as
long as it likes; enough of them exhaust the open-file limit, and then asyncio reports every failed accept() through
the loop's exception handler, a traceback each. :class:`GuardedProtocol` is the h11 protocol with three changes:

- from a connection's start, and from the first byte of each later request on it, the request line and headers must
  be complete within ``header_timeout``, else the connection gets a 408 and is closed (an idle keep-alive connection
  between requests is closed by uvicorn's ``timeout_keep_alive``); the rest of a body that a route answered without
  reading (``GET /health`` with a body, a 401) must arrive within the same time, else the connection is closed;
- beyond ``max_connections`` open connections a new one is answered 503 with ``Retry-After`` and closed at once, so
  the connections being served are not disturbed. uvicorn's ``limit_concurrency`` is not used: it counts requests in
  flight as well as connections, answers only once a request's headers have arrived (an idle connection over the
  limit keeps its file descriptor) and answers in text/plain;
- a request that h11 cannot parse is answered in the JSON shape of every other error, with h11's reason and status
  (400; 431 for headers over :data:`MAX_HEADER_BYTES`; 501 for a transfer coding other than chunked).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .protocol import clip

logger = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 1000
FILE_HEADROOM = 64  # file descriptors kept for everything but connections: model files, logs, the runtimes' own
MAX_HEADER_BYTES = 16 * 1024  # request line + headers (h11's receive buffer while it waits for them), else a 431
HEADERS = "request headers"
UNREAD_BODY = "rest of a body answered without being read"
LOG_INTERVAL = 10.0  # seconds between two log lines about the same repeated event

ACCEPT_FAILURE = "socket.accept() out of system resource"  # asyncio's message for EMFILE, ENFILE, ENOBUFS, ENOMEM


def error_bytes(status: int, message: str, headers: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 answer ``{"error": message}`` that closes the connection, written straight to a transport
    (for the answers given outside any request's cycle)."""
    body = json.dumps({"error": message}).encode()
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Throttled:
    """A warning for an event that can repeat thousands of times a second: the first occurrence is logged at once,
    the ones after it are counted and logged as one line per ``interval`` while they go on."""

    def __init__(self, what: str, interval: float = LOG_INTERVAL) -> None:
        self.what = what
        self.interval = interval
        self.pending = 0  # occurrences since the last line
        self.detail = ""
        self.timer: asyncio.TimerHandle | None = None

    def __call__(self, loop: asyncio.AbstractEventLoop, detail: str) -> None:
        self.detail = detail
        if self.timer is None:  # quiet until now
            logger.warning("%s: %s", self.what, detail)
            self.timer = loop.call_later(self.interval, self.flush, loop)
        else:
            self.pending += 1

    def flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self.timer = None
        if self.pending:
            logger.warning("%s %d more times in %g s: %s", self.what, self.pending, self.interval, self.detail)
            self.pending = 0
            self.timer = loop.call_later(self.interval, self.flush, loop)


@dataclass
class ConnectionLimits:
    """The limits every connection of one server shares, and the throttled logs of what they refuse."""

    header_timeout: float
    max_connections: int
    retry_after: int
    open_files: int | None = None  # the process's open-file limit, for the accept-failure message

    def __post_init__(self) -> None:
        self.refusals = Throttled(f"refused a connection over --max-connections {self.max_connections}")
        self.accept_failures = Throttled("accept() failed")

    def handle_loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The event loop's exception handler: a failed accept() is one throttled line, anything else goes to
        asyncio's default handler."""
        if context.get("message") != ACCEPT_FAILURE:
            loop.default_exception_handler(context)
            return
        limit = f" (open-file limit {self.open_files}; connections capped at {self.max_connections})"
        self.accept_failures(loop, f"{context.get('exception')}{limit if self.open_files else ''}")


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline, a connection cap and JSON protocol errors (module docstring).

    Built by :func:`protocol_class`, which sets :attr:`limits`.
    """

    limits: ClassVar[ConnectionLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline: asyncio.TimerHandle | None = None
        self.waiting_for: str | None = None  # what the deadline is for: HEADERS or UNREAD_BODY
        self.refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:  # this one is not among them yet
            self.refuse(transport)
            return
        super().connection_made(transport)
        self.watch()

    def refuse(self, transport: asyncio.Transport) -> None:
        """Answer 503 and close: the connection never joins the served ones."""
        self.refused = True
        self.transport = transport
        message = f"too many connections (more than {self.limits.max_connections}); retry later"
        transport.write(error_bytes(503, message, {"Retry-After": str(self.limits.retry_after)}))
        transport.close()
        peer = transport.get_extra_info("peername")
        self.limits.refusals(self.loop, f"from {peer[0] if peer else 'unknown'}")

    def data_received(self, data: bytes) -> None:
        if not self.refused:
            super().data_received(data)  # parses, then handle_events -> watch

    def handle_events(self) -> None:
        super().handle_events()
        self.watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self.set_deadline(None)
        if not self.refused:
            super().connection_lost(exc)

    def watch(self) -> None:
        """Keep the deadline that fits where the connection is: a request's headers are awaited from the connection's
        start or the first byte after a keep-alive pause (uvicorn's keep-alive timer runs during the pause itself); a
        body the server answered without reading must be finished within the same time. Each deadline runs from when
        its wait began, however many bytes trickle in."""
        their, ours = self.conn.their_state, self.conn.our_state
        if self.transport.is_closing():
            self.set_deadline(None)
        elif their is h11.IDLE and self.timeout_keep_alive_task is None:
            self.set_deadline(HEADERS)
        elif their is h11.SEND_BODY and ours in (h11.DONE, h11.MUST_CLOSE):
            self.set_deadline(UNREAD_BODY)
        else:  # a request being read by the app (--body-timeout) or answered (--timeout), or a keep-alive pause
            self.set_deadline(None)

    def set_deadline(self, waiting_for: str | None) -> None:
        if waiting_for == self.waiting_for:
            return  # the running deadline stands
        if self.deadline is not None:
            self.deadline.cancel()
        self.waiting_for = waiting_for
        self.deadline = None if waiting_for is None else self.loop.call_later(self.limits.header_timeout, self.late)

    def late(self) -> None:
        """A deadline passed: a 408 while headers were awaited (no request has started, so no app is involved); a
        plain close while an unread body trickled in (its answer is already sent)."""
        waiting_for, timeout = self.waiting_for, self.limits.header_timeout
        self.deadline = self.waiting_for = None
        if self.transport.is_closing():
            return
        if waiting_for == HEADERS:
            message = f"request headers not received within {timeout:g} s (--header-timeout)"
            self.transport.write(error_bytes(408, message))
        self.transport.close()
        logger.info("closed a connection whose %s did not arrive within %g s", waiting_for, timeout)

    def send_400_response(self, msg: str) -> None:
        """Answer a request h11 cannot parse as JSON, then close.

        uvicorn calls this from inside its ``except h11.RemoteProtocolError`` block, so the exception being handled
        is h11's, with its reason and suggested status.
        """
        error = sys.exc_info()[1]
        status = getattr(error, "error_status_hint", 400)
        reason = f"request headers larger than {MAX_HEADER_BYTES // 1024} KB" if status == 431 else str(error or msg)
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):  # nothing has been answered to this request yet
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.disconnected = True  # the app, reading this request's body, gets a disconnect; its
                self.cycle.message_event.set()  # answer, if any, goes nowhere
            self.transport.write(error_bytes(status, f"bad HTTP request: {clip(reason)}"))
        self.transport.close()


def protocol_class(limits: ConnectionLimits) -> type[GuardedProtocol]:
    """:class:`GuardedProtocol` bound to ``limits`` (uvicorn builds one protocol per connection from a class)."""
    return type("GuardedProtocol", (GuardedProtocol,), {"limits": limits})


class LimitedServer(uvicorn.Server):
    """uvicorn's server whose event loop logs failed accept() calls through ``limits`` (throttled)."""

    def __init__(self, config: uvicorn.Config, limits: ConnectionLimits) -> None:
        super().__init__(config)
        self.limits = limits

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        asyncio.get_running_loop().set_exception_handler(self.limits.handle_loop_exception)
        await super().serve(sockets)


def open_file_limit() -> int | None:
    """The process's open-file limit, raised first to the hard limit where the soft one is lower; ``None`` when the
    platform has none (Windows) or it is unlimited."""
    try:
        import resource
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # an unlimited or too-high hard limit: keep the soft one
            pass
    return None if soft == resource.RLIM_INFINITY else soft


def connection_cap(requested: int | None, open_files: int | None) -> int:
    """``--max-connections``: the requested cap, or :data:`DEFAULT_MAX_CONNECTIONS`, within what the open-file limit
    leaves after :data:`FILE_HEADROOM`.

    Raises:
        UsageError: the requested cap needs more file descriptors than the limit leaves.
    """
    from ..errors import UsageError

    room = None if open_files is None else open_files - FILE_HEADROOM
    if room is not None and room < 1:
        raise UsageError(f"the open-file limit ({open_files}) is too low to serve: raise it (ulimit -n)")
    if requested is None:
        return DEFAULT_MAX_CONNECTIONS if room is None else min(DEFAULT_MAX_CONNECTIONS, room)
    if room is not None and requested > room:
        raise UsageError(
            f"--max-connections {requested} needs more file descriptors than the open-file limit ({open_files}) "
            f"leaves: at most {room}; raise the limit (ulimit -n) or lower --max-connections"
        )
    return requested
