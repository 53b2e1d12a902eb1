"""Refuse request bodies the JSON APIs cannot read, before any parser sees them.

BentoML tries to parse whatever Content-Type arrives and answers a malformed multipart header with
a 500; a client that sent the wrong media type deserves a 415 that says what to send instead.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

JSON_ROUTES = ("/classify", "/feedback", "/v2/models/")
ACCEPTED = ("application/json", "")  # a missing Content-Type is read as JSON


class JsonBodyOnly:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith(JSON_ROUTES):
            headers = dict(scope["headers"])
            media_type = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
            if media_type not in ACCEPTED:
                body = json.dumps({"error": f"unsupported Content-Type {media_type!r}: send application/json"})
                await send({"type": "http.response.start", "status": 415,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": body.encode()})
                return
        await self.app(scope, receive, send)
