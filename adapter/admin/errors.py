"""What the admin surfaces refuse, each with the HTTP status its edges answer with."""

from __future__ import annotations


class AdminError(Exception):
    status = 400


class NotAuthenticatedError(AdminError):
    status = 401


class ForbiddenError(AdminError):
    status = 403


class NotFoundError(AdminError):
    status = 404


class ConflictError(AdminError):
    """The request is well formed but the registry's state does not allow it (now)."""

    status = 409


class TokenFileError(AdminError):
    """The tokens file is missing or malformed: a deployment fault, reported at start-up."""

    status = 500
