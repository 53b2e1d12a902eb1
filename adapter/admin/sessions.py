"""The console's sign-in: a token exchanged for a signed session cookie, and the CSRF token its forms carry.

The cookie holds the name, role, expiry and a CSRF nonce, signed with HMAC-SHA256; nothing is kept on the
server, so several adapter replicas accept each other's sessions when they share ``adapter.session_secret_file``
(without one, a random secret per process: sessions end when it restarts). Every request re-checks the name and
role against the tokens file, so revoking a token ends its sessions too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from adapter.admin.errors import ForbiddenError, NotAuthenticatedError
from adapter.admin.tokens import Principal, Role, TokenBook

SESSION_COOKIE = "tuneloop_session"
LOGIN_CSRF_COOKIE = "tuneloop_login_csrf"  # the sign-in form's, before there is a session


@dataclass(frozen=True)
class Session:
    principal: Principal
    csrf: str
    expires: float


class SessionSigner:
    def __init__(self, tokens: TokenBook, secret_file: Path | None, lifetime_s: float) -> None:
        self.tokens = tokens
        self.lifetime_s = lifetime_s
        self._key = secret_file.read_bytes().strip() if secret_file else secrets.token_bytes(32)
        if len(self._key) < 16:
            raise ValueError(f"the session secret in {secret_file} is shorter than 16 bytes")

    def _sign(self, payload: bytes) -> str:
        return base64.urlsafe_b64encode(hmac.new(self._key, payload, hashlib.sha256).digest()).decode().rstrip("=")

    def issue(self, principal: Principal) -> tuple[str, Session]:
        session = Session(principal, secrets.token_urlsafe(24), time.time() + self.lifetime_s)
        payload = json.dumps({"n": principal.name, "r": principal.role.value, "c": session.csrf,
                              "e": int(session.expires)}, separators=(",", ":")).encode()
        encoded = base64.urlsafe_b64encode(payload).decode().rstrip("=")
        return f"{encoded}.{self._sign(payload)}", session

    def read(self, cookie: str | None) -> Session:
        """The session a cookie carries; NotAuthenticatedError if absent, forged, expired or revoked."""
        if not cookie or "." not in cookie:
            raise NotAuthenticatedError("not signed in")
        encoded, signature = cookie.rsplit(".", 1)
        try:
            payload = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except ValueError:
            raise NotAuthenticatedError("not signed in") from None
        if not hmac.compare_digest(self._sign(payload), signature):
            raise NotAuthenticatedError("not signed in")
        data = json.loads(payload)
        if data["e"] < time.time():
            raise NotAuthenticatedError("the session has expired: sign in again")
        role = Role(data["r"])
        if not self.tokens.still_valid(data["n"], role):
            raise NotAuthenticatedError("the token behind this session was revoked")
        return Session(Principal(data["n"], role), data["c"], float(data["e"]))

    @staticmethod
    def check_csrf(expected: str, presented: str | None) -> None:
        if not presented or not hmac.compare_digest(expected, presented):
            raise ForbiddenError("the form's CSRF token is missing or wrong: reload the page and try again")
