"""Tokens and console sessions on their own: the file holds hashes only, lookups, revocation, forged and
expired sessions."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from adapter.admin.errors import ForbiddenError, NotAuthenticatedError, TokenFileError
from adapter.admin.sessions import SessionSigner
from adapter.admin.tokens import Role, TokenBook, add_token


@pytest.fixture
def tokens_file(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    path = tmp_path / "tokens.yaml"
    return path, {"olga": add_token(path, "olga", Role.OPERATOR), "vera": add_token(path, "vera", Role.VIEWER)}


def test_the_file_holds_hashes_never_tokens(tokens_file) -> None:
    path, tokens = tokens_file
    text = path.read_text()
    assert "olga" in text and not any(t in text for t in tokens.values())
    assert path.stat().st_mode & 0o077 == 0  # readable by its owner only
    with pytest.raises(TokenFileError, match="already has a token named 'olga'"):
        add_token(path, "olga", Role.VIEWER)


def test_a_token_names_its_holder_and_role(tokens_file) -> None:
    path, tokens = tokens_file
    book = TokenBook(path)
    assert (book.authenticate(tokens["olga"]).name, book.authenticate(tokens["olga"]).role) == ("olga", Role.OPERATOR)
    book.authenticate(tokens["olga"]).require_operator()
    with pytest.raises(ForbiddenError):
        book.authenticate(tokens["vera"]).require_operator()
    for wrong in (None, "", tokens["olga"] + "x", tokens["olga"][:-1]):
        with pytest.raises(NotAuthenticatedError) as refused:
            book.authenticate(wrong)
        assert tokens["olga"] not in str(refused.value)
    with pytest.raises(NotAuthenticatedError, match="no admin tokens are configured"):
        TokenBook(None).authenticate(tokens["olga"])


def test_removing_a_line_revokes_the_token_and_its_sessions(tokens_file) -> None:
    path, tokens = tokens_file
    book = TokenBook(path)
    signer = SessionSigner(book, None, lifetime_s=60)
    cookie, _ = signer.issue(book.authenticate(tokens["vera"]))
    assert signer.read(cookie).principal.name == "vera"
    document = yaml.safe_load(path.read_text())
    document["tokens"] = [t for t in document["tokens"] if t["name"] != "vera"]
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(NotAuthenticatedError):
        book.authenticate(tokens["vera"])
    with pytest.raises(NotAuthenticatedError, match="revoked"):
        signer.read(cookie)
    assert book.authenticate(tokens["olga"]).name == "olga"


def test_a_half_written_file_keeps_the_last_good_list(tokens_file) -> None:
    path, tokens = tokens_file
    book = TokenBook(path)
    path.write_text("tokens: [ {name: olga")
    assert book.authenticate(tokens["olga"]).name == "olga"
    with pytest.raises(TokenFileError):
        TokenBook(path)  # at start-up, a broken file is an error


def test_forged_tampered_and_expired_sessions_are_refused(tokens_file, tmp_path: Path) -> None:
    path, tokens = tokens_file
    book = TokenBook(path)
    (tmp_path / "secret").write_bytes(b"s" * 32)
    signer = SessionSigner(book, tmp_path / "secret", lifetime_s=60)
    cookie, session = signer.issue(book.authenticate(tokens["vera"]))
    payload, signature = cookie.rsplit(".", 1)
    assert SessionSigner(book, tmp_path / "secret", 60).read(cookie).csrf == session.csrf  # a replica shares it
    decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    promoted = base64.urlsafe_b64encode(decoded.replace(b'"viewer"', b'"operator"')).decode().rstrip("=")
    for bad in (None, "", "x", payload + ".AAAA", f"{promoted}.{signature}",  # a viewer making itself operator
                SessionSigner(book, None, 60).issue(book.authenticate(tokens["olga"]))[0]):
        with pytest.raises(NotAuthenticatedError):
            signer.read(bad)
    lapsed = SessionSigner(book, tmp_path / "secret", lifetime_s=-10)  # issued already past its end
    expired, _ = lapsed.issue(book.authenticate(tokens["vera"]))
    with pytest.raises(NotAuthenticatedError, match="expired"):
        signer.read(expired)
    with pytest.raises(ForbiddenError):
        SessionSigner.check_csrf(session.csrf, "nope")
