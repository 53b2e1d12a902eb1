"""``tuneloop admin-token``: make an operator's or a viewer's token for the admin API and console."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def admin_token(
    name: Annotated[str, typer.Argument(help="Who holds it: the audit log's actor for every write it makes.")],
    role: Annotated[str, typer.Option("--role", help="viewer (reads) or operator (also approves, rejects, "
                                      "promotes, rolls back, retrains).")] = "viewer",
    tokens_file: Annotated[Path, typer.Option("--file", help="The tokens file to append its hash to "
                                              "(adapter.admin_tokens_file).")] = Path("admin-tokens.yaml"),
) -> None:
    """Print a new token once and append its name, role and SHA-256 to the tokens file (never the token)."""
    from pydantic import ValidationError

    from adapter.admin.errors import AdminError
    from adapter.admin.tokens import Role, add_token
    from tuneloop.cli import console, fail

    if role not in {r.value for r in Role}:
        raise fail(f"--role must be one of: {', '.join(r.value for r in Role)}")
    try:
        token = add_token(tokens_file, name, Role(role))
    except ValidationError as exc:
        raise fail(f"{name!r} is not a usable name: {exc.errors()[0]['msg']}") from None
    except AdminError as exc:
        raise fail(str(exc)) from None
    console.print(f"{name} ({role}) added to {tokens_file}. The token, shown this once:", highlight=False)
    typer.echo(token)


def register(app: typer.Typer) -> None:
    app.command("admin-token")(admin_token)
