"""The admin app: the API and the console in one FastAPI application on ``adapter.admin_port``, with the edge
that turns admin errors into answers (JSON for the API, a page or a redirect to sign-in for the console) and the
security headers every answer carries."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapter.admin import api, console
from adapter.admin.context import AdminContext
from adapter.admin.errors import AdminError, NotAuthenticatedError

log = logging.getLogger(__name__)

HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # Scripts only from this origin (the console's own file and Plotly's); Plotly sets inline styles.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
}


def _is_console(request: Request) -> bool:
    return request.url.path.startswith("/console")


def build_admin_app(context: AdminContext) -> FastAPI:
    app = FastAPI(title="tuneloop admin API", version="1", docs_url=None, redoc_url=None,
                  openapi_url="/admin/api/openapi.json",
                  description="Versions, gate reports and audit trails; approve, reject, promote, roll back, "
                              "retrain. Bearer tokens: viewers read, operators also write.")
    app.state.admin = context
    app.include_router(api.router)
    app.include_router(console.router)

    @app.middleware("http")
    async def security_headers(request: Request, call_next) -> Response:
        response = await call_next(request)
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.exception_handler(AdminError)
    async def admin_error(request: Request, exc: AdminError) -> Response:
        if not _is_console(request):
            headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, NotAuthenticatedError) else None
            if exc.status >= 500:
                log.error("admin API: %s", exc)
                headers = {**(headers or {}), "Retry-After": "1"}
            return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)
        if isinstance(exc, NotAuthenticatedError) and request.method == "GET":
            return RedirectResponse("/console/login", status_code=303)
        return console.page(request, "message.html", http_status=exc.status, heading=f"Refused ({exc.status})",
                            error=str(exc), session=None)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        if _is_console(request):
            return console.page(request, "message.html", http_status=422, heading="Not accepted", error=problems,
                                session=None)
        return await request_validation_exception_handler(request, exc)  # the schema FastAPI's spec declares

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    return app
