"""The monitor's HTTP server: ``/metrics`` for Prometheus, ``/reports`` and ``/reports/<id>`` for operators.

The standard library's threading server is enough here: a scrape every few seconds and an operator now and
then; it keeps the monitor free of a web framework.
"""

from __future__ import annotations

import gzip
import html
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from monitoring.reports import ReportStore


class MonitorServer:
    def __init__(
        self,
        registry: CollectorRegistry | list[CollectorRegistry],
        reports: ReportStore,
        host: str = "0.0.0.0",
        port: int = 8700,
    ) -> None:
        # Several registries: the monitor's own, and in the CLI the process-wide one that holds the event
        # log's producer and consumer series (their names do not overlap).
        registries = registry if isinstance(registry, list) else [registry]
        handler = type("Handler", (_Handler,), {"registries": registries, "reports": reports})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def start(self) -> MonitorServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="monitor-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    registries: list[CollectorRegistry]
    reports: ReportStore
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # one line per scrape is noise
        pass

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        if path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, b"".join(generate_latest(r) for r in self.registries))
        elif path in ("/healthz", "/readyz"):
            self._send(200, "text/plain; charset=utf-8", b"ok\n")
        elif path == "/reports":
            wants_json = "json" in parse_qs(url.query).get(
                "format", []
            ) or "application/json" in self.headers.get("Accept", "")
            self._index(wants_json)
        elif path.startswith("/reports/"):
            self._report(path.removeprefix("/reports/"))
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics or /reports\n")

    def _index(self, as_json: bool) -> None:
        reports = self.reports.latest_first()
        if as_json:
            body = json.dumps([r.as_dict() for r in reports], indent=2).encode()
            self._send(200, "application/json", body)
            return
        rows = []
        for r in reports:
            d = r.as_dict()
            signals = ", ".join(
                f"{html.escape(name)}={s['score']:.3f}{' <b>drift</b>' if s['detected'] else ''}"
                for name, s in r.summary.items()
            )
            rows.append(
                f"<tr><td><a href='/reports/{html.escape(r.id)}'>{html.escape(r.id)}</a></td>"
                f"<td>{html.escape(r.model_version)}</td><td>{d['at']}</td>"
                f"<td>{'yes' if r.drift else 'no'}</td><td>{signals}</td></tr>"
            )
        page = (
            "<!doctype html><html><head><meta charset='utf-8'>"
            "<title>tuneloop drift reports</title></head><body>"
            f"<h1>Drift reports (last {self.reports.kept})</h1><table border='1' cellpadding='4'>"
            "<tr><th>report</th><th>model version</th><th>evaluated at</th><th>drift</th>"
            "<th>signals</th></tr>" + "".join(rows) + "</table></body></html>"
        )
        self._send(200, "text/html; charset=utf-8", page.encode())

    def _report(self, report_id: str) -> None:
        report = self.reports.get(report_id)
        if report is None:
            self._send(
                404,
                "text/plain; charset=utf-8",
                f"no report {report_id} (only the last {self.reports.kept} are kept)\n".encode(),
            )
            return
        body = report.html_gzip()
        if "gzip" in self.headers.get("Accept-Encoding", ""):
            self._send(200, "text/html; charset=utf-8", body, {"Content-Encoding": "gzip"})
        else:
            self._send(200, "text/html; charset=utf-8", gzip.decompress(body))

    def _send(
        self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
