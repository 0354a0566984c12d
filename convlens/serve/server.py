"""Run the app under uvicorn with its doors bounded: open connections, the time a client may take
to send a request head, idle keep-alive, the Host names answered, and repeated log lines."""

from __future__ import annotations

import ipaddress
import logging
import re
import select
import time

from convlens.errors import ConvlensError
from convlens.serve.limits import Limits

LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")  # the Host names a loopback server answers
_HOST_NAME = re.compile(r"(\*\.)?[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]")  # a name, *.name or [IPv6]


def allowed_hosts(bind: str, extra: tuple[str, ...] = ()) -> list[str] | None:
    """Host header names to answer (None: any). On a loopback address only the local names and
    `extra`, so a page whose DNS name is rebound to 127.0.0.1 gets 400 (as Jupyter and Vite do)."""
    bad = [name for name in extra if not _HOST_NAME.fullmatch(name)]
    if bad:
        raise ConvlensError(f"--allowed-host {bad[0]!r}: expected a host name without a port, "
                            f"*.domain or [IPv6 address]")  # fmt: skip
    if _loopback(bind) or extra:
        return [*LOCAL_HOSTS, *extra]
    return None  # bound to a public address and no names given: answer any


def run_server(app, host: str, port: int, limits: Limits) -> None:
    """Serve the ASGI `app` on host:port until interrupted."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        http=_head_timeout(limits.header_timeout),
        limit_concurrency=limits.max_connections,  # counts connections and running requests
        timeout_keep_alive=limits.keep_alive,
        h11_max_incomplete_event_size=16 * 1024,  # request line and headers, bytes (h11's)
    )
    logging.getLogger("uvicorn.error").addFilter(OncePerWindow())  # after uvicorn's dictConfig
    uvicorn.Server(config).run()


def _head_timeout(seconds: float) -> type:
    """uvicorn's h11 protocol, closing a connection that sends no complete request head within
    `seconds` of opening or of its last answer: uvicorn itself has no header timeout, and its
    keep-alive timer stops at the first byte, so a client sending a byte a minute stayed open."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadTimeout(H11Protocol):
        timer = None
        late = 0  # times the timer found unread bytes (a starved loop, not a slow client)

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc) -> None:
            if self.timer is not None:
                self.timer.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_later(seconds, self._expire)

        def _expire(self) -> None:
            # Waiting on the client: no request yet, or the last one answered (a body still
            # trickling in after an early 408 or 413 included). A request being handled stays.
            if self.cycle is not None and not self.cycle.response_complete:
                return
            if self.late < 3 and _pending(self.transport):
                # Bytes wait unread: the client sent them and this loop was too busy to read
                # them (requests computing on every core), so the client is not the slow one.
                self.late += 1
                self._arm()
                return
            self.transport.close()

    return HeadTimeout


def _pending(transport) -> bool:
    """Whether the connection's socket holds bytes not read yet (or the client's EOF)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock.fileno()], [], [], 0)
    except (OSError, ValueError):  # closed meanwhile
        return False
    return bool(readable)


class OncePerWindow(logging.Filter):
    """One record of each message per `window` seconds; the rest are counted and the count is
    added to the next one let through, so a flood of bad requests costs a line a minute."""

    def __init__(self, window: float = 60.0) -> None:
        super().__init__()
        self.window = window
        self.last: dict[str, float] = {}
        self.dropped: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key, now = str(record.msg), time.monotonic()
        if now - self.last.get(key, -self.window) < self.window:
            self.dropped[key] = self.dropped.get(key, 0) + 1
            return False
        if len(self.last) > 1000:  # message templates are few; a guard, not a cache policy
            self.last.clear()
        self.last[key] = now
        if n := self.dropped.pop(key, 0):
            record.msg = f"{record.msg} (and {n} like it since the last such line)"
        return True


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: not known to be loopback
        return False
