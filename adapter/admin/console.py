"""The web console (``/console``): server-rendered pages over the admin API's reads and writes.

Sign-in exchanges a token for a session cookie (HttpOnly, SameSite=Strict, Secure behind TLS); every form
carries the session's CSRF token, and every write goes through ``actions.py`` as the API's do. Jinja2 escapes
everything a page shows, model cards and traffic-derived text included.
"""

from __future__ import annotations

import secrets
from pathlib import Path as FilePath
from typing import Annotated, Any
from urllib.parse import quote

import plotly.graph_objects as go
from fastapi import APIRouter, Depends, Form, Path, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from adapter.admin import queries
from adapter.admin.context import AdminContext
from adapter.admin.errors import AdminError, NotAuthenticatedError
from adapter.admin.sessions import LOGIN_CSRF_COOKIE, SESSION_COOKIE, Session, SessionSigner
from adapter.admin.tokens import Principal, Role
from tuneloop.registry import State

HERE = FilePath(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
PLOTLY_JS = FilePath(go.__file__).parent.parent / "package_data" / "plotly.min.js"
STATIC = {"console.css": (HERE / "static" / "console.css", "text/css"),
          "console.js": (HERE / "static" / "console.js", "text/javascript"),
          "plotly.min.js": (PLOTLY_JS, "text/javascript")}
PENDING = (State.CANDIDATE, State.AWAITING_APPROVAL, State.APPROVED)
VERSION = Path(pattern=r"^[A-Za-z0-9._-]{1,64}$")
REPORT = Path(pattern=r"^[A-Za-z0-9._-]{1,128}$")
# Drift reports are Evidently's pages with their own scripts: shown in a sandbox, an opaque origin that can read
# no cookie of the console's and post no form.
REPORT_POLICY = ("sandbox allow-scripts; default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; "
                 "style-src 'unsafe-inline'; img-src data:; font-src data:")

router = APIRouter(prefix="/console", include_in_schema=False)


def context(request: Request) -> AdminContext:
    return request.app.state.admin


def session(request: Request) -> Session:
    return context(request).sessions.read(request.cookies.get(SESSION_COOKIE))


Ctx = Annotated[AdminContext, Depends(context)]
Signed = Annotated[Session, Depends(session)]


def secure(request: Request) -> bool:
    """Behind TLS (directly, or at an ingress that says so): cookies get the Secure flag."""
    return request.headers.get("x-forwarded-proto", request.url.scheme) == "https"


def page(request: Request, name: str, http_status: int = 200, **values: Any) -> HTMLResponse:
    response = templates.TemplateResponse(request, name, values, status_code=http_status)
    response.headers["Cache-Control"] = "no-store"
    return response


def back_to(url: str, notice: str) -> RedirectResponse:
    # 303: the browser follows with a GET, so reloading the result page never repeats the write.
    return RedirectResponse(f"{url}?notice={quote(notice)}", status_code=303)


def accuracy_figure(accuracy: queries.LiveAccuracy) -> dict[str, Any]:
    figure = go.Figure()
    for series in accuracy.series:
        figure.add_trace(go.Scatter(x=[p.start.isoformat() for p in series.points],
                                    y=[p.accuracy for p in series.points], mode="lines+markers",
                                    name=series.version, customdata=[p.n for p in series.points],
                                    hovertemplate="%{y:.3f} on %{customdata} examples<extra>%{fullData.name}</extra>"))
    figure.update_layout(margin={"l": 50, "r": 20, "t": 20, "b": 40}, yaxis={"range": [0, 1.02],
                         "title": "accuracy"}, legend={"title": "version"}, template="plotly_white")
    return figure.to_plotly_json()


def totals(accuracy: queries.LiveAccuracy) -> list[tuple[str, int, float]]:
    rows = []
    for series in accuracy.series:
        n = sum(p.n for p in series.points)
        right = sum(p.accuracy * p.n for p in series.points)
        rows.append((series.version, n, right / n if n else 0.0))
    return rows


# ---------------------------------------------------------------------- sign-in
@router.get("/static/{name}")
def static(name: str) -> Response:
    if name not in STATIC:
        return Response("not found", status_code=404, media_type="text/plain")
    path, media_type = STATIC[name]
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "public, max-age=3600"})


@router.get("/login")
def login_form(request: Request) -> HTMLResponse:
    nonce = secrets.token_urlsafe(24)
    response = page(request, "login.html", login_csrf=nonce, session=None,
                    error=request.query_params.get("error"))
    response.set_cookie(LOGIN_CSRF_COOKIE, nonce, httponly=True, samesite="strict", secure=secure(request),
                        path="/console")
    return response


@router.post("/login")
def login(request: Request, ctx: Ctx, token: Annotated[str, Form(max_length=512)],
          csrf: Annotated[str, Form(max_length=128)] = "") -> Response:
    SessionSigner.check_csrf(request.cookies.get(LOGIN_CSRF_COOKIE, ""), csrf)
    try:
        principal = ctx.tokens.authenticate(token.strip())
    except NotAuthenticatedError as exc:
        return RedirectResponse(f"/console/login?error={quote(str(exc))}", status_code=303)
    cookie, _ = ctx.sessions.issue(principal)
    response = RedirectResponse("/console/", status_code=303)
    response.set_cookie(SESSION_COOKIE, cookie, httponly=True, samesite="strict", secure=secure(request),
                        path="/", max_age=int(ctx.sessions.lifetime_s))
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/console")
    return response


@router.post("/logout")
def logout(who: Signed, csrf: Annotated[str, Form(max_length=128)] = "") -> Response:
    SessionSigner.check_csrf(who.csrf, csrf)
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# ---------------------------------------------------------------------- pages
@router.get("")
def root() -> RedirectResponse:
    return RedirectResponse("/console/", status_code=307)


@router.get("/")
def overview(request: Request, ctx: Ctx, who: Signed) -> HTMLResponse:
    versions = queries.version_rows(ctx.registry)
    accuracy = queries.live_accuracy(ctx.store, hours=24 * 7)
    history = ctx.registry.production_history()
    return page(request, "overview.html", session=who, can_write=who.principal.role is Role.OPERATOR,
                notice=request.query_params.get("notice"), production=ctx.registry.production(),
                rollback_to=history[0] if history else None, status=ctx.status(), versions=versions,
                pending=[r for r in versions if r.state in PENDING], drift=queries.drift_state(ctx.monitor_url),
                accuracy=accuracy, accuracy_totals=totals(accuracy), figure=accuracy_figure(accuracy))


@router.get("/versions/{version}")
def version_page(request: Request, ctx: Ctx, who: Signed, version: Annotated[str, VERSION]) -> HTMLResponse:
    detail = queries.version_detail(ctx.registry, version)
    related = {version, detail.card.gates.against if detail.card.gates else detail.production}
    drift = [d for d in queries.drift_state(ctx.monitor_url).versions if d.model_version in related]
    return page(request, "version.html", session=who, can_write=who.principal.role is Role.OPERATOR,
                notice=request.query_params.get("notice"), d=detail, drift=drift)


@router.get("/audit")
def audit_page(request: Request, ctx: Ctx, who: Signed) -> HTMLResponse:
    return page(request, "audit.html", session=who, entries=queries.audit(ctx.registry, 1000))


@router.get("/drift/{report_id}")
def drift_report(ctx: Ctx, who: Signed, report_id: Annotated[str, REPORT]) -> Response:
    body = queries.fetch_report(ctx.monitor_url, report_id)
    return Response(body, media_type="text/html; charset=utf-8",
                    headers={"Content-Security-Policy": REPORT_POLICY, "Cache-Control": "no-store"})


# ---------------------------------------------------------------------- writes (forms)
Flag = Annotated[str, Form(max_length=8)]  # a ticked checkbox sends "yes"
ReasonField = Annotated[str, Form(max_length=2000)]


def form_operator(who: Signed, csrf: Annotated[str, Form(max_length=128)] = "") -> Principal:
    """The signed-in operator behind a form post: its CSRF token checked first, then its role."""
    SessionSigner.check_csrf(who.csrf, csrf)
    who.principal.require_operator()
    return who.principal


Operator = Annotated[Principal, Depends(form_operator)]


def confirmed(value: str) -> None:
    if value != "yes":
        raise AdminError("tick the confirmation box to go ahead")


@router.post("/versions/{version}/approve")
def approve(ctx: Ctx, who: Operator, version: Annotated[str, VERSION], reason: ReasonField = "",
            promote: Flag = "", confirm: Flag = "") -> Response:
    confirmed(confirm)
    state = ctx.actions("console").approve(who, version, reason, promote == "yes")
    return back_to(f"/console/versions/{version}", f"{version} is now {state.value}")


@router.post("/versions/{version}/promote")
def promote(ctx: Ctx, who: Operator, version: Annotated[str, VERSION], confirm: Flag = "") -> Response:
    confirmed(confirm)
    ctx.actions("console").promote(who, version, None)
    return back_to(f"/console/versions/{version}", f"{version} is in production")


@router.post("/versions/{version}/reject")
def reject(ctx: Ctx, who: Operator, version: Annotated[str, VERSION], reason: ReasonField = "",
           confirm: Flag = "") -> Response:
    confirmed(confirm)
    ctx.actions("console").reject(who, version, reason)
    return back_to(f"/console/versions/{version}", f"{version} is rejected")


@router.post("/rollback")
def rollback(ctx: Ctx, who: Operator, reason: ReasonField = "", expect: Annotated[str, Form(max_length=64)] = "",
             confirm: Flag = "") -> Response:
    confirmed(confirm)
    pulled, restored = ctx.actions("console").rollback(who, reason, expect or None)
    return back_to("/console/", f"{pulled} rolled back; {restored} is in production")


@router.post("/retrain")
def retrain(ctx: Ctx, who: Operator, reason: ReasonField = "") -> Response:
    trigger = ctx.actions("console").retrain(who, reason)
    return back_to("/console/", f"retraining asked for (trigger {trigger}); it runs once enough fresh labels are there")
