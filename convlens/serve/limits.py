"""What the server accepts (Limits), and the ASGI middleware that holds request bodies to it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from fastapi.responses import JSONResponse


@dataclass
class Limits:
    """What the server accepts; convlens.serve.app says what happens past each."""

    max_body: int = 10 * 1024 * 1024  # bytes per request
    max_in_flight: int = 64  # requests being handled (body in) at once
    max_batch: int = 64  # images per model call
    batch_wait_ms: float = 2.0  # how long the first request of a batch waits for others
    max_connections: int = 256  # open connections; past it uvicorn answers 503
    header_timeout: float = 10.0  # seconds to send a request's head, then the connection closes
    body_timeout: float = 60.0  # seconds to send the whole body, then 408
    keep_alive: float = 5.0  # seconds an idle connection stays open
    decode_threads: int = 4  # uploads decoding at once (~0.2 GB each at the 64-MP limit)


class BodyRefused(Exception):
    """The body went past a limit: its size (413) or the time it may take to arrive (408)."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status, self.error = status, error

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.error}, self.status)


class BodyLimit:
    """ASGI middleware: 413 as soon as a body (declared or streamed) passes `max_body`, 408 when
    it is not all in `body_timeout` seconds after the request head."""

    def __init__(self, app, limits: Limits) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = BodyRefused(413, f"body over {self.limits.max_body} bytes")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared and declared.isdigit() and int(declared) > self.limits.max_body:
            return await _send(send, too_large.response())
        deadline = time.monotonic() + self.limits.body_timeout
        seen, body_in, started = 0, False, False

        async def counted():
            nonlocal seen, body_in
            if body_in:  # later reads wait for a disconnect, not for the body: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), deadline - time.monotonic())
            except TimeoutError:
                wait = self.limits.body_timeout
                raise BodyRefused(408, f"body not received within {wait:g} s") from None
            seen += len(message.get("body", b""))
            if seen > self.limits.max_body:
                raise too_large
            body_in = not message.get("more_body", False)
            return message

        async def sent(message):
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, counted, sent)
        except BodyRefused as e:  # raised outside the routes' own handling (which answers it)
            if not started:
                await _send(send, e.response())


async def _send(send, response: JSONResponse) -> None:
    start = {"type": "http.response.start", "status": response.status_code}
    await send({**start, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})
