"""Labelled examples, joined from predictions and their feedback, stored durably through SQLAlchemy.

SQLite (a file) by default; PostgreSQL by URL (``postgresql+psycopg://…``) where several adapter replicas
share one store. Either event may arrive first: a prediction waits for its feedback up to the feedback horizon,
and feedback for its prediction as long. A feedback event id is stored once (at-least-once delivery repeats
events). What the joiner ingests from one polled batch is one transaction, so the consumer commits its offsets
only after the store committed.

Tables: ``predictions`` (recent predictions, by request id), ``pending_feedback`` (feedback waiting for its
prediction), ``examples`` (the training data: text, true label, the version that predicted it), ``triggers``
(why a retraining was asked for, waiting or consumed) and ``runs`` (each retraining, with its outcome).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple

from filelock import FileLock, Timeout
from sqlalchemy import (JSON, Column, DateTime, Engine, Integer, MetaData, String, Table, Text, create_engine,
                        delete, exists, func, literal, select, text, update)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from adapter.errors import StoreError
from tuneloop.events.envelope import ReceivedEvent
from tuneloop.events.schemas import FeedbackEvent, PredictionEvent

log = logging.getLogger(__name__)

metadata = MetaData()

predictions = Table(
    "predictions", metadata,
    Column("request_id", String(64), primary_key=True),
    Column("model_name", String(200)),
    Column("model_version", String(64), nullable=False),
    Column("text", Text),  # None where the service logs hashes or nothing (kafka.log_inputs)
    Column("predicted", String(200), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
)
pending_feedback = Table(
    "pending_feedback", metadata,
    Column("event_id", String(64), primary_key=True),
    Column("request_id", String(64), nullable=False, index=True),
    Column("label", String(200), nullable=False),
    Column("text", Text),
    Column("source", String(200)),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("received", DateTime(timezone=True), nullable=False, index=True),
)
examples = Table(
    "examples", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False, unique=True),  # the feedback event's: stored once
    Column("request_id", String(64), nullable=False),
    Column("text", Text, nullable=False),
    Column("label", String(200), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("predicted", String(200), nullable=False),
    Column("feedback_at", DateTime(timezone=True), nullable=False, index=True),
    Column("stored_at", DateTime(timezone=True), nullable=False),
)
triggers = Table(
    "triggers", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("detail", JSON, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("run_id", Integer),  # None while it waits
)
runs = Table(
    "runs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("state", String(16), nullable=False),  # running, succeeded, rejected, failed, interrupted
    Column("owner", String(200), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("candidate", String(64)),
    Column("detail", JSON, nullable=False),
)

# Feedback outcomes (tuneloop_adapter_feedback_total{outcome}).
JOINED, WAITED, PENDING, DUPLICATE, UNUSABLE, UNMATCHED = ("joined", "waited", "pending", "duplicate",
                                                           "unusable", "unmatched")
FEEDBACK_OUTCOMES = (JOINED, WAITED, PENDING, DUPLICATE, UNUSABLE, UNMATCHED)
# pg_try_advisory_lock's key for "one retraining at a time": any constant all replicas agree on.
RETRAIN_LOCK_KEY = int.from_bytes(hashlib.sha256(b"tuneloop-retrain").digest()[:8], "big", signed=True)
# pg_advisory_xact_lock's key for "check for a waiting trigger, then record one" across adapters.
TRIGGER_LOCK_KEY = int.from_bytes(hashlib.sha256(b"tuneloop-triggers").digest()[:8], "big", signed=True)


def utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes: everything here is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Example:
    id: int
    text: str
    label: str
    model_version: str
    predicted: str
    feedback_at: datetime


@dataclass(frozen=True)
class Trigger:
    id: int
    kind: str
    detail: dict[str, Any]
    at: datetime


class Recorded(NamedTuple):
    """A trigger asked for: the one recorded, or the waiting one it was merged into."""

    id: int
    merged: bool


@dataclass(frozen=True)
class Run:
    id: int
    state: str
    owner: str
    started_at: datetime
    candidate: str | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class _Prediction:
    """What a join needs of a prediction, from its event or from its stored row."""

    text: str | None
    model_version: str
    predicted: str
    at: datetime


@dataclass
class IngestReport:
    """What one batch did: predictions stored, and what became of each feedback event."""

    predictions: int = 0
    feedback: Counter[str] = field(default_factory=Counter)
    delays_s: list[float] = field(default_factory=list)  # feedback time − prediction time, per example
    stored: list[tuple[str, str]] = field(default_factory=list)  # (label, model version) per new example


class LabelStore:
    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.engine: Engine = create_engine(url)
            if self.engine.dialect.name == "sqlite":
                _sqlite_path(url).parent.mkdir(parents=True, exist_ok=True)
            metadata.create_all(self.engine)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open the label store {self.safe_url}: {exc}") from exc

    @property
    def safe_url(self) -> str:
        """The URL without its password: for logs and errors."""
        return self.engine.url.render_as_string(hide_password=True) if hasattr(self, "engine") else "?"

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"label store {self.safe_url}: {exc}") from exc

    # ------------------------------------------------------------------ ingesting events
    def ingest(self, events: Iterable[ReceivedEvent]) -> IngestReport:
        """Store a batch of consumed events in one transaction; joined pairs become examples. Events of other
        kinds are left to their own handlers."""
        report = IngestReport()
        now = datetime.now(timezone.utc)
        with self._transaction() as conn:
            for event in events:
                if isinstance(event.data, PredictionEvent):
                    self._prediction(conn, event.data, now, report)
                elif isinstance(event.data, FeedbackEvent):
                    self._feedback(conn, event.event_id, event.data, now, report)
        return report

    def _prediction(self, conn: Connection, event: PredictionEvent, now: datetime, report: IngestReport) -> None:
        inserted = _insert_ignore(conn, predictions, {
            "request_id": event.request_id, "model_name": event.model_name, "model_version": event.model_version,
            "text": event.text, "predicted": event.label, "at": event.timestamp})
        report.predictions += inserted
        waiting = conn.execute(select(pending_feedback).where(
            pending_feedback.c.request_id == event.request_id)).mappings().all()
        prediction = _Prediction(event.text, event.model_version, event.label, event.timestamp)
        for row in waiting:
            feedback = FeedbackEvent(request_id=row["request_id"], label=row["label"], text=row["text"],
                                     source=row["source"] or "api", timestamp=utc(row["at"]))
            outcome = self._join(conn, row["event_id"], feedback, prediction, now, report)
            report.feedback[WAITED if outcome == JOINED else outcome] += 1
            conn.execute(delete(pending_feedback).where(pending_feedback.c.event_id == row["event_id"]))

    def _feedback(self, conn: Connection, event_id: str, event: FeedbackEvent, now: datetime,
                  report: IngestReport) -> None:
        known = (conn.execute(select(examples.c.id).where(examples.c.event_id == event_id)).first()
                 or conn.execute(select(pending_feedback.c.event_id)
                                 .where(pending_feedback.c.event_id == event_id)).first())
        if known:
            report.feedback[DUPLICATE] += 1
            return
        row = conn.execute(select(predictions).where(predictions.c.request_id == event.request_id)).mappings().first()
        if row is None:  # the prediction may still come: wait for it, up to the horizon
            conn.execute(pending_feedback.insert().values(
                event_id=event_id, request_id=event.request_id, label=event.label, text=event.text,
                source=event.source, at=event.timestamp, received=now))
            report.feedback[PENDING] += 1
            return
        prediction = _Prediction(row["text"], row["model_version"], row["predicted"], utc(row["at"]))
        report.feedback[self._join(conn, event_id, event, prediction, now, report)] += 1

    @staticmethod
    def _join(conn: Connection, event_id: str, feedback: FeedbackEvent, prediction: _Prediction,
              now: datetime, report: IngestReport) -> str:
        text_ = prediction.text or feedback.text
        if not text_:  # neither side carries the text: nothing to train on
            return UNUSABLE
        if not _insert_ignore(conn, examples, {
                "event_id": event_id, "request_id": feedback.request_id, "text": text_, "label": feedback.label,
                "model_version": prediction.model_version, "predicted": prediction.predicted,
                "feedback_at": feedback.timestamp, "stored_at": now}):
            return DUPLICATE
        report.delays_s.append((utc(feedback.timestamp) - utc(prediction.at)).total_seconds())
        report.stored.append((feedback.label, prediction.model_version))
        return JOINED

    def expire(self, horizon_s: float) -> int:
        """Forget predictions older than the horizon, and drop the feedback that waited for a prediction that
        long (it never becomes training data); returns how many feedback events were dropped."""
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=horizon_s)
        with self._transaction() as conn:
            conn.execute(delete(predictions).where(predictions.c.at < cutoff))
            return conn.execute(delete(pending_feedback).where(pending_feedback.c.received < cutoff)).rowcount

    # ------------------------------------------------------------------ reading examples
    def examples(self, after_id: int = 0) -> list[Example]:
        """Examples stored after ``after_id``, oldest feedback first."""
        with self._transaction() as conn:
            rows = conn.execute(select(examples).where(examples.c.id > after_id)
                                .order_by(examples.c.feedback_at, examples.c.id)).mappings().all()
        return [Example(r["id"], r["text"], r["label"], r["model_version"], r["predicted"], utc(r["feedback_at"]))
                for r in rows]

    def count_after(self, after_id: int) -> int:
        with self._transaction() as conn:
            return conn.execute(select(func.count()).select_from(examples).where(examples.c.id > after_id)).scalar_one()

    def last_example_id(self) -> int:
        with self._transaction() as conn:
            return conn.execute(select(func.coalesce(func.max(examples.c.id), 0))).scalar_one()

    def counts(self) -> dict[tuple[str, str], int]:
        """Examples per (label, model version)."""
        with self._transaction() as conn:
            rows = conn.execute(select(examples.c.label, examples.c.model_version, func.count())
                                .group_by(examples.c.label, examples.c.model_version)).all()
        return {(label, version): n for label, version, n in rows}

    def live_accuracy(self, version: str, since: datetime) -> tuple[int, int]:
        """(examples, correct) of ``version``'s predictions with feedback since ``since``."""
        with self._transaction() as conn:
            rows = conn.execute(select(examples.c.label, examples.c.predicted).where(
                examples.c.model_version == version, examples.c.feedback_at >= since)).all()
        return len(rows), sum(label == predicted for label, predicted in rows)

    def outcomes(self, since: datetime) -> list[tuple[str, datetime, bool]]:
        """(model version, feedback time, prediction right) of every example with feedback since ``since``,
        oldest first: live accuracy over time, per version."""
        with self._transaction() as conn:
            rows = conn.execute(select(examples.c.model_version, examples.c.feedback_at, examples.c.label,
                                       examples.c.predicted).where(examples.c.feedback_at >= since)
                                .order_by(examples.c.feedback_at)).all()
        return [(version, utc(at), label == predicted) for version, at, label, predicted in rows]

    # ------------------------------------------------------------------ triggers and runs
    def add_trigger(self, kind: str, detail: dict[str, Any]) -> int:
        with self._transaction() as conn:
            return conn.execute(triggers.insert().values(kind=kind, detail=_jsonable(detail),
                                                         at=datetime.now(timezone.utc))).inserted_primary_key[0]

    def add_version_trigger(self, kind: str, detail: dict[str, Any], merge_with: Collection[str]) -> Recorded:
        """Record a trigger for ``detail["model_version"]`` unless a trigger of a kind in ``merge_with`` waits
        for that version already: then it is merged into the oldest such one, and nothing is written."""
        version = triggers.c.detail["model_version"].as_string()
        waiting = (triggers.c.run_id.is_(None), triggers.c.kind.in_(merge_with),
                   version == str(detail["model_version"]))
        now = literal(datetime.now(timezone.utc), DateTime(timezone=True))
        row = select(literal(kind, String), literal(_jsonable(detail), JSON), now)
        row = row.where(~exists().where(*waiting))
        with self._transaction() as conn:
            if conn.dialect.name == "postgresql":
                # Read committed: two adapters could each find nothing waiting and both insert. SQLite takes
                # its write lock before the statement reads, which makes the one statement below enough there.
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": TRIGGER_LOCK_KEY})
            # A run may take the waiting trigger between the two statements (it does not hold the lock): the
            # next round records this one then.
            while True:
                inserted = conn.execute(triggers.insert().from_select(["kind", "detail", "at"], row)
                                        .returning(triggers.c.id)).first()
                if inserted is not None:
                    return Recorded(inserted[0], merged=False)
                oldest = conn.execute(select(func.min(triggers.c.id)).where(*waiting)).scalar_one()
                if oldest is not None:
                    return Recorded(oldest, merged=True)

    def triggers(self) -> list[Trigger]:
        """Every trigger recorded, waiting or taken."""
        with self._transaction() as conn:
            rows = conn.execute(select(triggers).order_by(triggers.c.id)).mappings()
            return [Trigger(r["id"], r["kind"], r["detail"], utc(r["at"])) for r in rows]

    def waiting_triggers(self) -> list[Trigger]:
        with self._transaction() as conn:
            rows = conn.execute(select(triggers).where(triggers.c.run_id.is_(None)).order_by(triggers.c.id)).mappings()
            return [Trigger(r["id"], r["kind"], r["detail"], utc(r["at"])) for r in rows]

    def last_trigger(self, kind: str) -> Trigger | None:
        with self._transaction() as conn:
            r = conn.execute(select(triggers).where(triggers.c.kind == kind).order_by(triggers.c.id.desc())
                             .limit(1)).mappings().first()
        return None if r is None else Trigger(r["id"], r["kind"], r["detail"], utc(r["at"]))

    def start_run(self, owner: str, trigger_ids: list[int], detail: dict[str, Any]) -> int:
        """Record a retraining as running and hand it the waiting triggers it answers."""
        with self._transaction() as conn:
            run_id = conn.execute(runs.insert().values(state="running", owner=owner, started_at=datetime.now(
                timezone.utc), detail=_jsonable(detail))).inserted_primary_key[0]
            if trigger_ids:
                conn.execute(update(triggers).where(triggers.c.id.in_(trigger_ids)).values(run_id=run_id))
        return run_id

    def finish_run(self, run_id: int, state: str, candidate: str | None = None, **detail: Any) -> None:
        with self._transaction() as conn:
            current = conn.execute(select(runs.c.detail).where(runs.c.id == run_id)).scalar_one()
            conn.execute(update(runs).where(runs.c.id == run_id).values(
                state=state, candidate=candidate, finished_at=datetime.now(timezone.utc),
                detail=_jsonable({**(current or {}), **detail})))

    def release_triggers(self, run_id: int) -> None:
        """The run did not complete: its triggers wait again."""
        with self._transaction() as conn:
            conn.execute(update(triggers).where(triggers.c.run_id == run_id).values(run_id=None))

    def runs(self, state: str | None = None) -> list[Run]:
        query = select(runs).order_by(runs.c.id)
        if state is not None:
            query = query.where(runs.c.state == state)
        with self._transaction() as conn:
            rows = conn.execute(query).mappings().all()
        return [Run(r["id"], r["state"], r["owner"], utc(r["started_at"]), r["candidate"], r["detail"] or {})
                for r in rows]

    def last_finished_run(self, state: str = "succeeded") -> Run | None:
        done = self.runs(state)
        return done[-1] if done else None

    # ------------------------------------------------------------------ one retraining at a time
    @contextlib.contextmanager
    def retrain_lock(self) -> Iterator[bool]:
        """Held while a retraining runs, by one process among all that share this store: an advisory lock on
        PostgreSQL (released by the server if the holder dies), a file lock beside a SQLite file. Yields
        whether it was taken; never waits."""
        if self.engine.dialect.name == "postgresql":
            with self.engine.connect() as conn:
                taken = conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": RETRAIN_LOCK_KEY}).scalar()
                try:
                    yield bool(taken)
                finally:
                    if taken:
                        conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": RETRAIN_LOCK_KEY})
            return
        lock = FileLock(f"{_sqlite_path(self.url)}.retrain.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()


def _sqlite_path(url: str) -> Path:
    return Path(url.split(":///", 1)[1]).absolute()


def _insert_ignore(conn: Connection, table: Table, row: dict[str, Any]) -> int:
    """Insert unless a row with the same key exists; 1 if inserted."""
    dialect = {"sqlite": sqlite, "postgresql": postgresql}.get(conn.dialect.name)
    if dialect is None:
        raise StoreError(f"the label store speaks SQLite or PostgreSQL, not {conn.dialect.name}")
    key = next(iter(table.primary_key.columns))
    # RETURNING says whether a row went in: rowcount is -1 for this statement on SQLite.
    return int(conn.execute(dialect.insert(table).values(**row).on_conflict_do_nothing().returning(key)).first()
               is not None)


def _jsonable(detail: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(detail, default=str))
