"""Errors of the serving path. Each carries the HTTP status and gRPC code its edge answers with; every HTTP
route answers one as ``{"error": message}``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel

# A list of 10 000 numbers where strings belong is 10 000 problems; the first few say what is wrong.
MAX_PROBLEMS = 5


class ErrorResponse(BaseModel):
    error: str


def describe_validation_errors(errors: Iterable[Mapping[str, Any]]) -> str:
    """pydantic's (or FastAPI's) validation errors as one line: where each is, then what it is."""
    problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" if e["loc"] else e["msg"] for e in errors]
    more = len(problems) - MAX_PROBLEMS
    return "; ".join(problems[:MAX_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")


class ServiceError(Exception):
    status: int = HTTPStatus.INTERNAL_SERVER_ERROR
    grpc_code = "INTERNAL"
    # When to try again, for an error that passes: HTTP's Retry-After, gRPC's grpc-retry-pushback-ms.
    retry_after_s: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInputError(ServiceError):
    status = HTTPStatus.BAD_REQUEST
    grpc_code = "INVALID_ARGUMENT"


class TextTooLongError(ServiceError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    grpc_code = "INVALID_ARGUMENT"


class ModelNotFoundError(ServiceError):
    status = HTTPStatus.NOT_FOUND
    grpc_code = "NOT_FOUND"


class NotEnabledError(ServiceError):
    """The route exists in the API but this deployment turned its feature off."""

    status = HTTPStatus.NOT_FOUND
    grpc_code = "UNIMPLEMENTED"


class ModelNotReadyError(ServiceError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    grpc_code = "UNAVAILABLE"


class OverloadedError(ServiceError):
    """The batcher's queue is full: refused at once rather than queued behind more than the model can run
    soon. The client should come back after ``retry_after_s``."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    grpc_code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ClientDisconnectedError(ServiceError):
    """The HTTP client went away before its answer; nobody reads the response, but the request is counted."""

    status = 499  # nginx's "client closed request": no standard code says it, and it is no server error
    grpc_code = "CANCELLED"


class SwapError(ServiceError):
    """A new version could not be swapped in; the old one keeps serving."""

    def __init__(self, version: str, reason: str, detail: str) -> None:
        super().__init__(f"cannot swap in {version}: {reason}: {detail}")
        self.version = version
        self.reason = reason
