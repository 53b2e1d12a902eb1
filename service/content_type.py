"""Refuse request bodies the APIs cannot read, before any parser sees them.

A client that sent the wrong media type deserves a 415 that says what to send instead, not a parse
error about a body it never meant as JSON.
The OIP infer routes also read ``application/octet-stream``: the binary tensor data extension
(service/rest_binary.py), which Triton's and KServe's REST clients send by default. Every other route
takes JSON only.
"""

from __future__ import annotations

import json
import re

from starlette.types import ASGIApp, Receive, Scope, Send

JSON_ROUTES = ("/classify", "/feedback", "/v2/models/")
ACCEPTED = ("application/json", "")  # a missing Content-Type is read as JSON
INFER_ROUTE = re.compile(r"/v2/models/[^/]+(?:/versions/[^/]+)?/infer")
OCTET_STREAM = "application/octet-stream"
ACCEPTED_ON_INFER = (*ACCEPTED, OCTET_STREAM)


def media_type(content_type: str | None) -> str:
    """The bare media type of a Content-Type header value ("" when there is none)."""
    return (content_type or "").split(";")[0].strip().lower()


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
                body = json.dumps({"error": f"unsupported Content-Type {sent!r}: {advice}"})
                await send({"type": "http.response.start", "status": 415,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": body.encode()})
                return
        await self.app(scope, receive, send)
