"""Who may use the admin API and console: bearer tokens with roles, from a file that holds only their hashes.

The file (``adapter.admin_tokens_file``, typically a mounted Secret) is YAML::

    tokens:
      - {name: alice, role: operator, sha256: 9f86d08…}
      - {name: grafana, role: viewer, sha256: 2c26b46…}

``tuneloop admin-token`` makes a token, prints it once and appends its line. A token is 32 random bytes, so a
plain SHA-256 is as good as a slow password hash here: nobody can guess the preimage. The file is read again
when it changes, so revoking a token (removing its line) takes effect without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapter.admin.errors import ForbiddenError, NotAuthenticatedError, TokenFileError


class Role(StrEnum):
    VIEWER = "viewer"  # reads everything
    OPERATOR = "operator"  # and approves, rejects, promotes, rolls back, asks for a retraining


class TokenEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.@-]+$")
    role: Role
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class TokenFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: list[TokenEntry] = Field(default_factory=list)


@dataclass(frozen=True)
class Principal:
    """Who is asking: the token's name (the audit log's actor) and its role."""

    name: str
    role: Role

    def require_operator(self) -> None:
        if self.role is not Role.OPERATOR:
            raise ForbiddenError(f"{self.name} is a {self.role.value}: only an operator may change state")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return "tl_" + secrets.token_urlsafe(32)


class TokenBook:
    """The tokens file, looked up in constant time and reloaded when it changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._entries: list[TokenEntry] = []
        if path is not None:
            self._reload()  # a broken file fails at start-up, not at the first sign-in

    @property
    def configured(self) -> bool:
        return self.path is not None

    def _reload(self) -> None:
        try:
            stat = os.stat(self.path)
            stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if stamp == self._stamp:
                return
            document = yaml.safe_load(Path(self.path).read_text(encoding="utf-8")) or {}
            entries = TokenFile.model_validate(document).tokens
        except (OSError, yaml.YAMLError, ValidationError) as exc:
            raise TokenFileError(f"admin tokens file {self.path}: {exc}") from exc
        names = [e.name for e in entries]
        if len(names) != len(set(names)):
            raise TokenFileError(f"admin tokens file {self.path}: a name appears twice")
        self._entries, self._stamp = entries, stamp

    def authenticate(self, token: str | None) -> Principal:
        """The principal a presented token belongs to; NotAuthenticatedError otherwise (the token is never
        part of the message)."""
        if not self.configured:
            raise NotAuthenticatedError("no admin tokens are configured (adapter.admin_tokens_file)")
        if not token:
            raise NotAuthenticatedError("a bearer token is required")
        entries = self._current_entries()
        digest = hash_token(token)
        found = None
        for entry in entries:  # every entry compared, so the time taken says nothing about which matched
            if hmac.compare_digest(entry.sha256, digest):
                found = entry
        if found is None:
            raise NotAuthenticatedError("the token is not valid")
        return Principal(found.name, found.role)

    def still_valid(self, name: str, role: Role) -> bool:
        """Whether a signed-in session's name still holds that role (its token may have been revoked since)."""
        return any(e.name == name and e.role is role for e in self._current_entries())

    def _current_entries(self) -> list[TokenEntry]:
        """The file's entries, re-read if it changed; the last good list while a rotation is half written."""
        with self._lock:
            try:
                self._reload()
            except TokenFileError:
                pass
            return list(self._entries)


def add_token(path: Path, name: str, role: Role) -> str:
    """A new token for ``name`` with ``role``, its hash appended to the file; the token is returned once."""
    entry = TokenEntry(name=name, role=role, sha256="0" * 64)  # a bad name fails here, before anything is written
    document = TokenFile()
    if path.exists():
        try:
            document = TokenFile.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
        except (yaml.YAMLError, ValidationError) as exc:
            raise TokenFileError(f"{path} is not a tokens file: {exc}") from exc
    if any(e.name == name for e in document.tokens):
        raise TokenFileError(f"{path} already has a token named {name!r}; remove its line first")
    token = new_token()
    document.tokens.append(entry.model_copy(update={"sha256": hash_token(token)}))
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(yaml.safe_dump(document.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)
    return token
