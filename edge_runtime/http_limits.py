"""Limits on the API's connections, so clients cannot starve the daemon of file descriptors.

uvicorn alone keeps a connection that sends nothing (or half a request head, or 10 of 100 body
bytes) open forever, and accepts connections until the process runs out of descriptors; then the
camera lanes cannot open a file either, and asyncio logs a traceback per refused accept. Here:

- at most `max_connections` are open, counted from accept() (one more is answered 503 and closed
  at once); near the limit each new one closes the longest-idle connection (one whose request is
  not in the app), so a flood of idle sockets cannot lock the POS out;
- a request head must arrive within `head_timeout_s` of connecting (or of the last answer);
- a request body must arrive within `body_timeout_s` of its head;
- the connection budget never exceeds what RLIMIT_NOFILE leaves after the daemon's own files;
- the same log line is written at most once per interval, with a count of the ones left out."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# Descriptors the daemon needs besides API connections: model and detector files, SQLite (db,
# WAL, shm), cameras and video files, pipes, the event file, ONNX Runtime and OpenCV internals.
# Measured ~40 with two lanes; the rest is headroom for lanes reopening their sources.
RESERVED_FDS = 128
MIN_CONNECTIONS = 8
# How far the soft RLIMIT_NOFILE is raised towards the hard limit at start (systemd's soft
# default is 1,024; deploy/agetool.service also sets LimitNOFILE).
WANTED_NOFILE = 65536


@dataclass(frozen=True)
class HttpLimits:
    """What one API connection may hold, and for how long."""

    max_connections: int = 256
    head_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    keep_alive_timeout_s: float = 5.0


def raise_nofile_limit(wanted: int = WANTED_NOFILE) -> int:
    """Raise the soft descriptor limit towards the hard one; the soft limit in force after."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    return wanted if soft == resource.RLIM_INFINITY else int(soft)


def connection_budget(configured: int, nofile_soft: int) -> int:
    """The connections the API may hold: the configured number, or fewer when the descriptor
    limit would not leave RESERVED_FDS for the rest of the daemon."""
    return max(MIN_CONNECTIONS, min(configured, nofile_soft - RESERVED_FDS))


class RepeatLimiter(logging.Filter):
    """Lets a given log line (logger + message template) through at most once per interval; the
    next one that passes says how many were left out. Tracebacks are folded into one line: a
    repeated error's traceback is what turned one refused accept into 140 MB of log."""

    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        last_s, suppressed = self._last.get(key, (-float("inf"), 0))
        if now - last_s < self.interval_s:
            self._last[key] = (last_s, suppressed + 1)
            return False
        self._last[key] = (now, 0)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        if suppressed:
            record.msg = f"{record.getMessage()} ({suppressed} more like this in the last {self.interval_s:.0f} s)"
            record.args = None
        return True


def limit_repeats(logger_names: tuple[str, ...], interval_s: float = 10.0) -> None:
    """Install one RepeatLimiter on each named logger (once)."""
    for name in logger_names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatLimiter) for f in logger.filters):
            logger.addFilter(RepeatLimiter(interval_s))


class ConnectionGuard:
    """Counts the API's accepted sockets from accept() to close(), in the event loop's thread.

    The count is kept at the socket, not in the protocol: asyncio accepts up to `backlog` sockets
    in one go before any protocol sees them, so a check in connection_made comes too late to keep
    a flood from taking every descriptor."""

    # Past max_connections - EVICT_MARGIN each new connection closes the longest-idle one, so the
    # count settles below the limit and a newcomer (the POS) gets in while idle sockets pile up.
    EVICT_MARGIN = 16

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.open = 0
        self.refused = 0
        self.protocols: set[Any] = set()  # uvicorn's server_state.connections, once known

    def admit(self) -> bool:
        # At the limit an idle connection makes room for the newcomer (its descriptor is freed a
        # moment later): a burst accepted before any protocol existed could not evict on the way
        # up, and would otherwise lock the POS out behind idle sockets.
        if self.open >= self.limits.max_connections and not self.evict_idle():
            self.refused += 1
            log.warning("api: %d connections open (api.max_connections), refusing new ones",
                        self.limits.max_connections)
            return False
        self.open += 1
        if self.open > self.limits.max_connections - self.EVICT_MARGIN:
            self.evict_idle()
        return True

    def released(self) -> None:
        self.open -= 1

    def evict_idle(self) -> bool:
        """Close the longest-idle connection; False when none is idle."""
        idle = [p for p in self.protocols if not p._in_app and not p.transport.is_closing()]
        if not idle:
            return False
        log.warning("api: %d connections open (api.max_connections), closing the longest idle",
                    self.limits.max_connections)
        min(idle, key=lambda p: p._idle_since)._close("evicted")
        return True


REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
           b"connection: close\r\ncontent-length: 46\r\n\r\n" b'{"detail":"too many open connections, retry"}\n')


class _CountedSocket(socket.socket):
    """An accepted connection that tells the guard when it is closed (once)."""

    guard: ConnectionGuard

    def close(self) -> None:
        if self.fileno() >= 0:
            self.guard.released()
        super().close()


def listening_socket(family: int, kind: int, proto: int, guard: ConnectionGuard) -> socket.socket:
    """A listening socket whose accept() admits at most guard.limits.max_connections at once; one
    past that is answered 503 and closed at once, costing no lasting descriptor."""
    counted = type("CountedSocket", (_CountedSocket,), {"guard": guard})

    class GuardedListeningSocket(socket.socket):
        def accept(self) -> tuple[socket.socket, Any]:
            fd, address = self._accept()  # type: ignore[attr-defined]
            if not guard.admit():
                refused = socket.socket(self.family, self.type, self.proto, fileno=fd)
                refused.setblocking(False)
                try:
                    refused.send(REFUSAL)
                except OSError:
                    pass
                refused.close()
                raise BlockingIOError  # ends this accept burst; the loop comes back for the next
            return counted(self.family, self.type, self.proto, fileno=fd), address

    return GuardedListeningSocket(family, kind, proto)


def guarded_protocol_class(limits: HttpLimits, guard: ConnectionGuard) -> type:
    """uvicorn's h11 protocol with the limits above (pass as uvicorn.Config(http=...))."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            guard.protocols = self.connections
            self.app = self._guard_app(self.app)
            self._deadline: asyncio.TimerHandle | None = None
            self._in_app = False
            self._idle_since = time.monotonic()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm(limits.head_timeout_s, "request head")

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            self._in_app = False
            self._idle_since = time.monotonic()
            super().on_response_complete()
            if not self.transport.is_closing():
                # uvicorn's keep-alive timer stops at the first byte; the next head gets a deadline too
                self._arm(limits.head_timeout_s, "request head")

        # --- deadlines -------------------------------------------------------------------
        def _arm(self, seconds: float, what: str) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._expired, what)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self, what: str) -> None:
            log.info("api: no complete %s within its timeout, connection closed", what)
            self._close(what)

        def _close(self, _why: str) -> None:
            self._disarm()
            if not self.transport.is_closing():
                if self.conn.our_state is not h11.ERROR:
                    try:
                        self.conn.send(h11.ConnectionClosed())
                    except h11.LocalProtocolError:
                        pass
                self.transport.close()

        def _guard_app(self, inner: Any) -> Any:
            protocol = self

            async def app(scope: dict, receive: Any, send: Any) -> None:
                protocol._disarm()  # the head is in
                protocol._in_app = True
                deadline = protocol.loop.time() + limits.body_timeout_s
                body_done = False

                async def receive_in_time() -> dict:
                    nonlocal body_done
                    if body_done:
                        return await receive()
                    try:
                        message = await asyncio.wait_for(receive(), max(0.0, deadline - protocol.loop.time()))
                    except asyncio.TimeoutError:
                        log.info("api: request body not complete within %.0f s, connection closed",
                                 limits.body_timeout_s)
                        protocol._close("request body")
                        return {"type": "http.disconnect"}
                    body_done = message["type"] != "http.request" or not message.get("more_body", False)
                    return message

                await inner(scope, receive_in_time, send)

            return app

    return GuardedH11Protocol
