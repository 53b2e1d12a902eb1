"""The Evidently report of each evaluation: the last N, kept in memory and rendered when someone asks.

One evaluation runs one Evidently report per signal (each timed on its own); their widgets are merged into
one snapshot so an operator sees every signal of a window on one page. Rendering (~0.1 s, ~4 MB of HTML with
Evidently's scripts inline) happens on the first request and is then cached gzip-compressed, so a monitor
nobody looks at pays nothing for it.
"""

from __future__ import annotations

import gzip
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from evidently.core.report import Snapshot
from evidently.core.serialization import ReportModel, SnapshotModel


def merge_snapshots(
    snapshots: list[Snapshot], name: str | None = None, metadata: dict[str, str] | None = None
) -> Snapshot:
    """One snapshot holding every given snapshot's metric results and widgets, in order."""
    models = [s.to_snapshot_model() for s in snapshots]
    merged = SnapshotModel(
        report=ReportModel(items=[]),
        name=name,
        timestamp=models[0].timestamp if models else datetime.now(UTC),
        metadata=dict(metadata or {}),
        tags=[],
        metric_results={k: v for m in models for k, v in m.metric_results.items()},
        top_level_metrics=[k for m in models for k in m.top_level_metrics],
        widgets=[w for m in models for w in m.widgets],
        tests_widgets=[],
    )
    return Snapshot.load_model(merged)


@dataclass
class StoredReport:
    id: str
    model_version: str
    at: float  # seconds since the epoch
    summary: dict[str, dict[str, float | bool | str]]  # signal → score, threshold, detected, method
    drift: bool
    snapshot: Snapshot | None
    _html_gzip: bytes | None = field(default=None, repr=False)

    def html_gzip(self) -> bytes:
        if self._html_gzip is None:
            html = self.snapshot.get_html_str(as_iframe=False) if self.snapshot else "<p>no report</p>"
            self._html_gzip = gzip.compress(html.encode("utf-8"), compresslevel=6)
            self.snapshot = None  # the compressed page is all that is needed from now on
        return self._html_gzip

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "model_version": self.model_version,
            "at": datetime.fromtimestamp(self.at, UTC).isoformat(),
            "drift": self.drift,
            "signals": self.summary,
        }


class ReportStore:
    def __init__(self, kept: int) -> None:
        self.kept = kept
        self._reports: OrderedDict[str, StoredReport] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, report: StoredReport) -> None:
        with self._lock:
            self._reports[report.id] = report
            while len(self._reports) > self.kept:
                self._reports.popitem(last=False)

    def get(self, report_id: str) -> StoredReport | None:
        with self._lock:
            return self._reports.get(report_id)

    def latest_first(self) -> list[StoredReport]:
        with self._lock:
            return list(reversed(self._reports.values()))
