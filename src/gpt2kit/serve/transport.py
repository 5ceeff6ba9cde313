"""uvicorn's side of the edge: how long a connection may idle or dawdle, and how many there may be.

uvicorn closes an idle keep-alive connection (`timeout_keep_alive`) and refuses requests beyond
`limit_concurrency` open connections with 503, but it has no deadline for a request's *headers*: a socket
that connects and sends nothing, or half a request line, is held forever (550 such sockets were still open
after 75 s). `HeaderDeadlineH11` adds one: from the moment a connection opens, or a response on it ends,
the next request's headers must be complete within `header_timeout` seconds, else the socket is closed.
The body deadline is an ASGI concern (security.EdgeGuard), as only the app knows when it reads the body.

Both `serve()` and `BackgroundServer` build their uvicorn settings here, so tests run what users run.
"""

from __future__ import annotations

import copy
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from gpt2kit.serve.config import ServeConfig

log = logging.getLogger("gpt2kit.serve")

MAX_HEADER_BYTES = 16 * 1024  # request line + headers; h11 answers 400 beyond (its default, made explicit)


class HeaderDeadlineH11(H11Protocol):
    """uvicorn's h11 protocol plus a deadline on receiving each request's headers (`header_timeout`, set by
    `uvicorn_config` on a subclass)."""

    header_timeout: float = 10.0

    def connection_made(self, transport) -> None:
        self._header_timer = None
        super().connection_made(transport)
        self._arm_header_deadline()

    def handle_events(self) -> None:
        super().handle_events()
        if self._header_timer is not None and self.conn.their_state is not h11.IDLE:  # a request's headers arrived
            self._header_timer.cancel()
            self._header_timer = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.IDLE:  # keep-alive: the next request starts its own clock
            self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        if self._header_timer is None and not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.header_timeout, self._header_deadline_passed)

    def _header_deadline_passed(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            peer = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            log.info("closed the connection from %s: no complete request headers within %g s", peer, self.header_timeout)
            self.transport.close()


def uvicorn_config(app, config: ServeConfig, log_level: str = "info", **kwargs):
    """uvicorn.Config for `app` with the server's limits: header/body/keep-alive timeouts, connection cap."""
    import uvicorn

    protocol = type("HeaderDeadlineH11", (HeaderDeadlineH11,), {"header_timeout": config.header_timeout})
    return uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level, http=protocol,
                          timeout_keep_alive=config.keep_alive_timeout, limit_concurrency=config.max_connections,
                          h11_max_incomplete_event_size=MAX_HEADER_BYTES, **kwargs)  # fmt: skip


def log_config_with_gpt2kit(level: str) -> dict:
    """uvicorn's logging config plus the `gpt2kit` loggers on the same console handler, so the server's own
    INFO lines (a client gone mid-body, a connection closed at its deadline) show next to uvicorn's."""
    from uvicorn.config import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg["loggers"]["gpt2kit"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return cfg
