"""The admin API (``/admin/api``): bearer tokens, JSON in and out, an OpenAPI spec at ``/admin/api/openapi.json``.

Reads need a viewer's or an operator's token; writes an operator's. The handlers are thin: ``queries.py`` reads,
``actions.py`` writes, and ``app.py`` turns admin errors into answers.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from adapter.admin import queries
from adapter.admin.context import AdminContext
from adapter.admin.tokens import Principal
from tuneloop.registry import State
from tuneloop.registry.journal import AuditEntry

VERSION = Path(pattern=r"^[A-Za-z0-9._-]{1,64}$", description="a version id, such as v3")
Reason = Annotated[str | None, Field(None, max_length=2000)]
bearer = HTTPBearer(auto_error=False, description="an admin token (tuneloop admin-token)")


class ErrorBody(BaseModel):
    error: str


ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 503)}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApproveRequest(Strict):
    reason: Reason = None
    promote: bool = Field(False, description="promote at once once approved")


class RejectRequest(Strict):
    reason: str = Field(min_length=1, max_length=2000, pattern=r"\S", description="why: kept in the audit log")


class PromoteRequest(Strict):
    reason: Reason = None


class RollbackRequest(Strict):
    reason: Reason = None
    expect: str | None = Field(None, max_length=64, description="refuse unless this version is in production")


class RetrainRequest(Strict):
    reason: str = Field(min_length=1, max_length=2000, pattern=r"\S")


class VersionState(BaseModel):
    version: str
    state: State
    production: str | None


class RollbackResult(BaseModel):
    pulled: str
    restored: str


class RetrainResult(BaseModel):
    trigger: int


class WhoAmI(BaseModel):
    name: str
    role: str


def context(request: Request) -> AdminContext:
    return request.app.state.admin


def principal(request: Request,
              credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
    return context(request).tokens.authenticate(credentials.credentials if credentials else None)


def operator(who: Annotated[Principal, Depends(principal)]) -> Principal:
    """A write's caller, refused before its body is even looked at unless an operator."""
    who.require_operator()
    return who


Ctx = Annotated[AdminContext, Depends(context)]
Who = Annotated[Principal, Depends(principal)]
Operator = Annotated[Principal, Depends(operator)]
router = APIRouter(prefix="/admin/api", responses=ERRORS)


@router.get("/whoami", response_model=WhoAmI)
def whoami(who: Who) -> WhoAmI:
    return WhoAmI(name=who.name, role=who.role.value)


@router.get("/versions", response_model=list[queries.VersionRow])
def versions(ctx: Ctx, who: Who) -> list[queries.VersionRow]:
    return queries.version_rows(ctx.registry)


@router.get("/versions/{version}", response_model=queries.VersionDetail)
def version(ctx: Ctx, who: Who, version: Annotated[str, VERSION]) -> queries.VersionDetail:
    return queries.version_detail(ctx.registry, version)


@router.get("/versions/{version}/differences", response_model=list[queries.SetDifference])
def version_differences(ctx: Ctx, who: Who, version: Annotated[str, VERSION]) -> list[queries.SetDifference]:
    return queries.version_detail(ctx.registry, version).differences


@router.get("/status", response_model=dict[str, Any])
def status(ctx: Ctx, who: Who) -> dict[str, Any]:
    return ctx.status()


@router.get("/accuracy", response_model=queries.LiveAccuracy)
def accuracy(ctx: Ctx, who: Who,
             hours: Annotated[float, Query(gt=0, le=24 * 90, description="how far back")] = 24 * 7) -> queries.LiveAccuracy:
    return queries.live_accuracy(ctx.store, hours)


@router.get("/drift", response_model=queries.DriftState)
def drift(ctx: Ctx, who: Who) -> queries.DriftState:
    return queries.drift_state(ctx.monitor_url)


@router.get("/audit", response_model=list[AuditEntry])
def audit(ctx: Ctx, who: Who, limit: Annotated[int, Query(ge=1, le=10_000)] = 200) -> list[AuditEntry]:
    return queries.audit(ctx.registry, limit)


def _state(ctx: AdminContext, version: str) -> VersionState:
    return VersionState(version=version, state=ctx.registry.state(version), production=ctx.registry.production())


@router.post("/versions/{version}/approve", response_model=VersionState)
def approve(ctx: Ctx, who: Operator, version: Annotated[str, VERSION], body: ApproveRequest) -> VersionState:
    ctx.actions("admin API").approve(who, version, body.reason, body.promote)
    return _state(ctx, version)


@router.post("/versions/{version}/reject", response_model=VersionState)
def reject(ctx: Ctx, who: Operator, version: Annotated[str, VERSION], body: RejectRequest) -> VersionState:
    ctx.actions("admin API").reject(who, version, body.reason)
    return _state(ctx, version)


@router.post("/versions/{version}/promote", response_model=VersionState)
def promote(ctx: Ctx, who: Operator, version: Annotated[str, VERSION], body: PromoteRequest) -> VersionState:
    ctx.actions("admin API").promote(who, version, body.reason)
    return _state(ctx, version)


@router.post("/rollback", response_model=RollbackResult)
def rollback(ctx: Ctx, who: Operator, body: RollbackRequest) -> RollbackResult:
    pulled, restored = ctx.actions("admin API").rollback(who, body.reason, body.expect)
    return RollbackResult(pulled=pulled, restored=restored)


@router.post("/retrain", response_model=RetrainResult, status_code=202)
def retrain(ctx: Ctx, who: Operator, body: RetrainRequest) -> RetrainResult:
    return RetrainResult(trigger=ctx.actions("admin API").retrain(who, body.reason))
