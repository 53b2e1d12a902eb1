"""Refuse request bodies the APIs cannot read, before any parser sees them.

A client that sent the wrong media type deserves a 415 that says what to send instead, not a parse
error about a body it never meant as JSON.
The OIP infer routes also read ``application/octet-stream``: the binary tensor data extension
(service/rest_binary.py), which Triton's and KServe's REST clients send by default. Every other route
takes JSON only.

A body over ``serving.max_body_bytes`` gets a 413 before it is read past the limit (``BodyLimit``): every
route reads its body whole, and neither uvicorn nor BentoML limits its size.
"""

from __future__ import annotations

import json
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import REJECTED

JSON_ROUTES = ("/classify", "/feedback", "/v2/models/")
ACCEPTED = ("application/json", "")  # a missing Content-Type is read as JSON
INFER_ROUTE = re.compile(r"/v2/models/[^/]+(?:/versions/[^/]+)?/infer")
OCTET_STREAM = "application/octet-stream"
ACCEPTED_ON_INFER = (*ACCEPTED, OCTET_STREAM)


def media_type(content_type: str | None) -> str:
    """The bare media type of a Content-Type header value ("" when there is none)."""
    return (content_type or "").split(";")[0].strip().lower()


async def _refuse(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None,
                  ) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class JsonBodyOnly:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith(JSON_ROUTES):
            headers = dict(scope["headers"])
            sent = media_type(headers.get(b"content-type", b"").decode("latin-1"))
            infer = INFER_ROUTE.fullmatch(scope["path"]) is not None
            if sent not in (ACCEPTED_ON_INFER if infer else ACCEPTED):
                advice = ("send application/json, or application/octet-stream with "
                          "Inference-Header-Content-Length (the binary tensor data extension)"
                          if infer else "send application/json")
                await _refuse(send, 415, f"unsupported Content-Type {sent!r}: {advice}")
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """413 for a request body over ``max_bytes``: at once when its Content-Length says so, and for a body
    without one (chunked) as soon as the bytes read pass the limit; the rest is never read. Pure ASGI, and
    a request with an acceptable Content-Length passes straight through: one header lookup a request."""

    # The 413 closes the connection: uvicorn would otherwise read (and drop) the rest of the body to reach
    # the next request. A client that sends the whole body before reading may see a reset instead (RFC 9110
    # lets a server close here); httpx and curl read the 413.
    CLOSE = [(b"connection", b"close")]

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        REJECTED.labels("body_too_large")  # shown from the start, at 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = next((value for name, value in scope["headers"] if name == b"content-length"), None)
        if length is not None and length.isdigit():  # uvicorn has refused a malformed one already
            if int(length) > self.max_bytes:
                await self._too_large(send, f"{int(length)} bytes, over")
                return
            await self.app(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away mid-body: nobody to answer
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send, "more bytes than")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _too_large(self, send: Send, what: str) -> None:
        REJECTED.labels("body_too_large").inc()
        await _refuse(send, 413, f"request body too large: {what} the limit of {self.max_bytes} bytes "
                                 "(serving.max_body_bytes)", self.CLOSE)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the body already read as one message, then whatever the connection says next
    (the disconnect that service.dataplane.until_disconnected waits for)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed
