"""The label store on SQLite and on a real PostgreSQL: joins in either order, duplicates, unusable and
unmatched feedback, and one retraining at a time across processes that share the store."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from adapter.loop.store import DUPLICATE, JOINED, PENDING, UNUSABLE, WAITED, LabelStore
from tuneloop.events.envelope import ReceivedEvent
from tuneloop.events.schemas import FeedbackEvent, PredictionEvent


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'labels.db'}"
    return request.getfixturevalue("postgres_url")


def received(data, event_id: str | None = None) -> ReceivedEvent:
    return ReceivedEvent(event_id=event_id or uuid.uuid4().hex, event_type=data.event_type, source="test",
                         data=data, topic="t", partition=0, offset=0)


def prediction(request_id: str, text: str | None = "great phone", version: str = "v1", label: str = "1",
               at: datetime | None = None) -> ReceivedEvent:
    mode = "text" if text is not None else "hash"
    return received(PredictionEvent(
        request_id=request_id, model_name="sentiment", model_version=version, input_mode=mode, text=text,
        text_sha256=None if text is not None else "0" * 64, text_length=11, label=label,
        probabilities={"0": 0.1, "1": 0.9}, latency_ms=1.0, timestamp=at or datetime.now(timezone.utc)))


def feedback(request_id: str, label: str = "0", text: str | None = None, event_id: str | None = None,
             at: datetime | None = None) -> ReceivedEvent:
    return received(FeedbackEvent(request_id=request_id, label=label, text=text,
                                  timestamp=at or datetime.now(timezone.utc)), event_id)


def test_prediction_then_feedback_and_feedback_then_prediction_both_join(store_url: str) -> None:
    store = LabelStore(store_url)
    first = store.ingest([prediction("a"), feedback("a", label="0")])
    assert first.feedback == {JOINED: 1} and first.predictions == 1
    early = store.ingest([feedback("b", label="1")])
    assert early.feedback == {PENDING: 1}
    late = store.ingest([prediction("b", text="awful battery", version="v2", label="0")])
    assert late.feedback == {WAITED: 1}
    rows = store.examples()
    assert [(e.text, e.label, e.model_version, e.predicted) for e in rows] == [
        ("great phone", "0", "v1", "1"), ("awful battery", "1", "v2", "0")]
    assert store.counts() == {("0", "v1"): 1, ("1", "v2"): 1}
    assert store.count_after(rows[0].id) == 1 and store.last_example_id() == rows[-1].id


def test_a_feedback_event_delivered_twice_is_stored_once(store_url: str) -> None:
    store = LabelStore(store_url)
    store.ingest([prediction("a")])
    again = feedback("a", event_id="e1")
    assert store.ingest([again]).feedback == {JOINED: 1}
    assert store.ingest([again]).feedback == {DUPLICATE: 1}
    early = feedback("b", event_id="e2")
    assert store.ingest([early, early]).feedback == {PENDING: 1, DUPLICATE: 1}  # waiting counts as known
    assert store.ingest([prediction("a")]).predictions == 0  # a prediction replayed is not stored twice
    assert len(store.examples()) == 1


def test_text_comes_from_the_feedback_where_predictions_carry_none(store_url: str) -> None:
    store = LabelStore(store_url)
    report = store.ingest([prediction("h1", text=None), feedback("h1", text="the screen cracked"),
                           prediction("h2", text=None), feedback("h2")])
    assert report.feedback == {JOINED: 1, UNUSABLE: 1}
    assert [e.text for e in store.examples()] == ["the screen cracked"]


def test_feedback_no_prediction_ever_carried_is_dropped_after_the_horizon(store_url: str) -> None:
    store = LabelStore(store_url)
    old = datetime.now(timezone.utc) - timedelta(hours=2)
    store.ingest([prediction("old", at=old), feedback("never-predicted")])
    assert store.expire(horizon_s=3600) == 0  # the orphan has waited less than the horizon
    assert store.expire(horizon_s=0) == 1
    # The prediction older than the horizon is forgotten too: its feedback comes too late to join.
    assert store.ingest([feedback("old")]).feedback == {PENDING: 1}
    assert store.examples() == []


def test_live_accuracy_per_version(store_url: str) -> None:
    store = LabelStore(store_url)
    since = datetime.now(timezone.utc) - timedelta(minutes=1)
    store.ingest([prediction(f"r{i}", version="v2", label="1") for i in range(4)]
                 + [feedback(f"r{i}", label="1" if i < 3 else "0") for i in range(4)])
    assert store.live_accuracy("v2", since) == (4, 3)
    assert store.live_accuracy("v1", since) == (0, 0)


def test_one_retraining_at_a_time_across_stores_sharing_one_database(store_url: str) -> None:
    first, second = LabelStore(store_url), LabelStore(store_url)
    with first.retrain_lock() as taken:
        assert taken
        with second.retrain_lock() as also:
            assert not also
    with second.retrain_lock() as taken_after:
        assert taken_after


def test_triggers_wait_until_a_run_takes_them_and_return_if_it_fails(store_url: str) -> None:
    store = LabelStore(store_url)
    drift = store.add_trigger("drift_alert", {"model_version": "v1"})
    manual = store.add_trigger("manual", {"actor": "alice"})
    assert [t.id for t in store.waiting_triggers()] == [drift, manual]
    run = store.start_run("adapter-1", [drift, manual], {"fresh": 10})
    assert store.waiting_triggers() == [] and store.runs("running")[0].id == run
    store.release_triggers(run)
    store.finish_run(run, "failed", error="boom")
    assert [t.id for t in store.waiting_triggers()] == [drift, manual]
    finished = store.runs("failed")[0]
    assert finished.detail == {"fresh": 10, "error": "boom"}
    assert store.last_trigger("manual").detail == {"actor": "alice"}


DRIFT = ("drift_alert", "drift_event")


def test_a_drift_trigger_merges_into_one_waiting_for_its_version(store_url: str) -> None:
    store = LabelStore(store_url)
    first = store.add_version_trigger("drift_event", {"model_version": "v1", "signals": "embedding"}, DRIFT)
    again = store.add_version_trigger("drift_event", {"model_version": "v1", "signals": "text_oov"}, DRIFT)
    alert = store.add_version_trigger("drift_alert", {"model_version": "v1", "signals": ["embedding"]}, DRIFT)
    other = store.add_version_trigger("drift_event", {"model_version": "v2"}, DRIFT)
    assert not first.merged and again == alert == (first.id, True) and not other.merged
    assert [(t.kind, t.detail["model_version"]) for t in store.waiting_triggers()] == [
        ("drift_event", "v1"), ("drift_event", "v2")]
    # Once a run took it, the same version's next drift is a new question.
    store.start_run("adapter-1", [first.id], {})
    later = store.add_version_trigger("drift_event", {"model_version": "v1"}, DRIFT)
    assert not later.merged and later.id not in (first.id, other.id)


def test_concurrent_drift_triggers_for_one_version_record_one(store_url: str) -> None:
    """Adapters sharing a store, each told of the same drift at once, record it once."""
    stores = [LabelStore(store_url) for _ in range(6)]
    start = threading.Barrier(len(stores))

    def ask(store: LabelStore):
        start.wait()
        return store.add_version_trigger("drift_event", {"model_version": "v1"}, DRIFT)

    with ThreadPoolExecutor(len(stores)) as pool:
        answers = list(pool.map(ask, stores))
    assert sorted(a.merged for a in answers) == [False] + [True] * 5
    assert len({a.id for a in answers}) == 1 and len(stores[0].waiting_triggers()) == 1


def test_a_bad_url_is_a_store_error() -> None:
    from adapter.errors import StoreError

    with pytest.raises(StoreError, match="cannot open the label store"):
        LabelStore("postgresql+psycopg://nobody:secret@127.0.0.1:1/none?connect_timeout=2")
