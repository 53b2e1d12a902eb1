"""A real service process logging to a real broker: predictions, feedback, outages and a crash."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.events.conftest import consume_until, every_message, every_record, spool_segments
from tests.fixtures.broker import isolated_settings, kafka_env
from tests.server_process import ServerProcess
from tests.waiting import wait_for
from tuneloop.events.broker import TansuBroker
from tuneloop.events.envelope import unwrap
from tuneloop.settings import KafkaSettings

@pytest.fixture(scope="module")
def logging_server(served_registry: Path, tmp_path_factory: pytest.TempPathFactory):
    """One service with its event log on, for the tests that only talk to it."""
    folder = tmp_path_factory.mktemp("logging-server")
    with TansuBroker(log_path=folder / "tansu.log") as broker:
        settings = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, spool_dir=folder / "spool")
        with ServerProcess(served_registry, folder / "server.log", grpc=False, env=kafka_env(settings)) as server:
            yield server


TEXTS = [f"review number {i}: the phone is {'great' if i % 2 else 'awful'}" for i in range(12)]


def answered(request, timeout: float = 60.0) -> httpx.Response:
    """``request()``'s response once it is not a 503: with several workers, /readyz may have answered
    for one while another is still loading its model."""
    deadline = time.monotonic() + timeout
    response = request()
    while response.status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.2)
        response = request()
    return response


def metrics_text(server: ServerProcess) -> str:
    return answered(lambda: httpx.get(f"{server.url}/metrics")).text


def counter(server: ServerProcess, name: str, topic: str = "tuneloop.predictions") -> float:
    text = metrics_text(server)
    return sum(float(v) for v in re.findall(rf'^{name}{{topic="{re.escape(topic)}"}} (\S+)$', text, re.M))


def all_spooled(server: ServerProcess, count: int) -> bool:
    """Whether the service has spooled ``count`` predictions, waiting up to 30 s for its sender to get there."""
    return wait_for(lambda: counter(server, "tuneloop_events_spooled_total") >= count, 30, interval=0.2)


def test_predictions_and_feedback_reach_their_topics(served_registry: Path, broker: TansuBroker,
                                                     kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    broker.start()
    with ServerProcess(served_registry, tmp_path / "server.log", grpc=False, env=kafka_env(kafka_settings)) as server:
        body = httpx.post(f"{server.url}/classify", json={"texts": TEXTS}).json()
        ids = [p["request_id"] for p in body["predictions"]]
        single = httpx.post(f"{server.url}/feedback", json={"request_id": ids[0], "label": "1", "source": "qa"})
        assert single.status_code == 202 and single.json() == {"accepted": 1}
        batch = httpx.post(f"{server.url}/feedback",
                           json={"feedback": [{"request_id": i, "label": "0"} for i in ids[1:4]]})
        assert batch.json() == {"accepted": 3}
        with_text = httpx.post(f"{server.url}/feedback", json={"request_id": ids[4], "label": "0", "text": TEXTS[4]})
        assert with_text.status_code == 202
        predictions = consume_until(kafka_settings, ["predictions"], len(TEXTS))
        feedback = consume_until(kafka_settings, ["feedback"], 5)
        model_events = consume_until(kafka_settings, ["model-events"], 1)
        records = every_record(kafka_settings, "predictions")
    by_id = {e.data.request_id: e.data for e in predictions}
    assert set(by_id) == set(ids)
    first = by_id[ids[0]]
    assert (first.model_name, first.model_version, first.text) == ("sentiment", "v1", TEXTS[0])
    assert first.embedding_vector().shape == (32,)  # the tiny model's pooled embedding
    assert first.label == body["predictions"][0]["label"]
    assert sorted(e.data.request_id for e in feedback) == sorted(ids[:5])
    assert {e.data.source for e in feedback} == {"qa", "api"}
    assert {e.data.request_id: e.data.text for e in feedback}[ids[4]] == TEXTS[4]
    # The key is the request id: a prediction and its feedback land in the same partition, in order.
    assert {r.key.decode(): unwrap(r.value).data.request_id for r in records} == {i: i for i in ids}
    # The hot swap that loaded the first model is on the model-events topic.
    swap = [e.data for e in model_events if e.data.kind == "swap"]
    assert swap and (swap[0].version, swap[0].actor, swap[0].reason) == ("v1", "tuneloop-service",
                                                                         "first model loaded")


@pytest.mark.parametrize("mode", ["hash", "none"])
def test_log_inputs_keeps_the_text_out_of_the_events(served_registry: Path, kafka_broker, tmp_path: Path,
                                                     mode: str) -> None:
    settings = isolated_settings(kafka_broker.bootstrap_servers, tmp_path / "spool")
    env = {**kafka_env(settings), "TUNELOOP_KAFKA__LOG_INPUTS": mode}
    with ServerProcess(served_registry, tmp_path / "server.log", grpc=False, env=env) as server:
        body = httpx.post(f"{server.url}/classify", json={"texts": TEXTS[:4]}).json()
        events = consume_until(settings, ["predictions"], 4)
    by_id = {e.data.request_id: e.data for e in events}
    for text, prediction in zip(TEXTS[:4], body["predictions"]):
        event = by_id[prediction["request_id"]]
        assert event.input_mode == mode and event.text is None and event.text_length == len(text)
        assert event.text_sha256 == (hashlib.sha256(text.encode()).hexdigest() if mode == "hash" else None)
        assert text not in json.dumps(event.model_dump(mode="json"))


@pytest.mark.parametrize("shipper", ["thread", "process"])
def test_broker_down_at_start_then_every_prediction_arrives(served_registry: Path, broker: TansuBroker,
                                                            kafka_settings: KafkaSettings, tmp_path: Path,
                                                            shipper: str) -> None:
    """With either shipper: in the serving process, or in a process beside it whose counters the service's
    /metrics shows too."""
    env = kafka_env(kafka_settings) | {"TUNELOOP_KAFKA__SHIPPER": shipper}
    with ServerProcess(served_registry, tmp_path / "server.log", grpc=False, env=env) as server:
        ids = []
        for i in range(0, len(TEXTS), 3):
            r = httpx.post(f"{server.url}/classify", json={"texts": TEXTS[i:i + 3]})
            assert r.status_code == 200  # the broker's absence costs the client nothing
            ids += [p["request_id"] for p in r.json()["predictions"]]
        shippers = [pid for pid in server.descendants()
                     if "tuneloop.events.shipper" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")]
        assert len(shippers) == (1 if shipper == "process" else 0)
        assert all_spooled(server, len(ids))
        assert counter(server, "tuneloop_events_spooled_total") == len(ids)
        broker.start()
        got = consume_until(kafka_settings, ["predictions"], len(ids))
        assert sorted(e.data.request_id for e in got) == sorted(ids)
        # Replayed in the order they were spooled: within each partition, in the order they were sent.
        on_partitions: dict[int, list[str]] = {}
        for record in every_record(kafka_settings, "predictions"):
            on_partitions.setdefault(record.partition, []).append(unwrap(record.value).data.request_id)
        for partition, replayed in on_partitions.items():
            assert replayed == [i for i in ids if i in set(replayed)], partition
        assert counter(server, "tuneloop_events_replayed_total") >= len(ids)
        assert counter(server, "tuneloop_events_dropped_total") == 0


@pytest.mark.parametrize("shipper", ["thread", "process"])
def test_service_killed_with_a_full_spool_replays_after_restart(served_registry: Path, broker: TansuBroker,
                                                                kafka_settings: KafkaSettings, tmp_path: Path,
                                                                shipper: str) -> None:
    """The restarted service replays the dead one's spool with no request to prompt it."""
    env = kafka_env(kafka_settings) | {"TUNELOOP_KAFKA__SPOOL_FSYNC": "always", "TUNELOOP_KAFKA__SHIPPER": shipper}
    server = ServerProcess(served_registry, tmp_path / "first.log", grpc=False, env=env).start()
    ids = [p["request_id"] for p in httpx.post(f"{server.url}/classify", json={"texts": TEXTS}).json()["predictions"]]
    all_spooled(server, len(ids))  # else the crash below finds fewer to replay, and the count at the end says so
    server.crash()  # every process of it SIGKILLed: no drain, no goodbye
    assert list(kafka_settings.spool_dir.rglob("*.spool"))
    broker.start()
    with ServerProcess(served_registry, tmp_path / "second.log", grpc=False, env=env):
        got = consume_until(kafka_settings, ["predictions"], len(ids))
    assert sorted(e.data.request_id for e in got) == sorted(ids)


def classify_until_spooled(server: ServerProcess, batches: int) -> list[str]:
    """Request ids of ``batches`` classify calls, each on a connection of its own (so the workers share
    them), once every prediction is in a spool."""
    ids = []
    for i in range(batches):
        texts = TEXTS[i % 4 * 3:][:3]
        r = answered(lambda: httpx.post(f"{server.url}/classify", json={"texts": texts}))
        assert r.status_code == 200
        ids += [p["request_id"] for p in r.json()["predictions"]]
    assert all_spooled(server, len(ids))
    assert counter(server, "tuneloop_events_spooled_total") == len(ids)
    return ids


def spool_bytes(server: ServerProcess) -> float:
    """tuneloop_spool_bytes: what the workers say they still hold."""
    text = metrics_text(server)
    found = re.search(r"^tuneloop_spool_bytes (\S+)$", text, re.M)
    assert found, text[-2000:]
    return float(found[1])


def test_two_workers_deliver_each_spooled_prediction_once(
        served_registry: Path, broker: TansuBroker, kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    with ServerProcess(served_registry, tmp_path / "server.log", grpc=False, env=kafka_env(kafka_settings),
                       args=["--workers", "2"]) as server:
        ids = classify_until_spooled(server, 100)  # the broker is down
        folders = {p.parent for p in spool_segments(kafka_settings.spool_dir)}
        broker.start()
        # A segment goes once the broker acknowledged every event in it; and a worker that still counts
        # bytes no longer there would stay in spool mode for good.
        assert wait_for(lambda: not spool_segments(kafka_settings.spool_dir) and spool_bytes(server) == 0)
        got = every_message(kafka_settings, "predictions")
    assert len(got) == len({e.event_id for e in got}) == len(ids)  # none twice
    assert sorted(e.data.request_id for e in got) == sorted(ids)
    assert len(folders) == 2  # both workers had spooled: a folder each


def test_a_killed_workers_spool_is_delivered_by_the_survivor(
        served_registry: Path, broker: TansuBroker, kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    # In a container BentoML does not respawn a worker that died (BENTOML_CONTAINERIZED, set by its
    # images): the worker still alive has to deliver what the dead one spooled.
    env = kafka_env(kafka_settings) | {"BENTOML_CONTAINERIZED": "true"}
    with ServerProcess(served_registry, tmp_path / "server.log", grpc=False, env=env,
                       args=["--workers", "2"]) as server:
        ids = classify_until_spooled(server, 40)  # the broker is down
        folders = sorted({p.parent for p in spool_segments(kafka_settings.spool_dir)})
        victim = int(folders[0].name.split("-")[-2])  # p-<host>-<pid>-<random>
        assert victim in server.descendants()
        os.kill(victim, signal.SIGKILL)
        broker.start()
        # Not tuneloop_spool_bytes: the dead worker's last value stays in it (nothing marks it dead).
        assert wait_for(lambda: not spool_segments(kafka_settings.spool_dir))
        got = every_message(kafka_settings, "predictions")
        assert not folders[0].exists()  # adopted, replayed and removed
    assert len(got) == len({e.event_id for e in got}) == len(ids)
    assert sorted(e.data.request_id for e in got) == sorted(ids)


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        ({"request_id": "not-an-id", "label": "1"}, 400, "malformed request_id"),
        ({"request_id": "a" * 32, "label": "neutral"}, 400, "unknown label 'neutral'"),
        ({"feedback": []}, 400, "invalid request"),
        ({"feedback": [{"request_id": "a" * 32, "label": "1"}, {"request_id": "b" * 32, "label": "7"}]}, 400,
         "feedback[1]: unknown label"),
        ({"request_id": 5, "label": "1"}, 400, "invalid request"),
        ({"label": "1"}, 400, "invalid request"),
        ({"request_id": "a" * 32, "label": "1", "text": "  "}, 400, "text is empty"),
        ({"request_id": "a" * 32, "label": "1", "text": "x" * 10_001}, 413, "text has 10001 characters"),
    ],
)
def test_bad_feedback_gets_a_4xx(logging_server: ServerProcess, payload: dict, status: int, message: str) -> None:
    r = httpx.post(f"{logging_server.url}/feedback", json=payload)
    assert r.status_code == status, r.text
    assert message in r.text


def test_feedback_that_is_not_json_gets_a_415(logging_server: ServerProcess) -> None:
    r = httpx.post(f"{logging_server.url}/feedback", content=b"label=1",
                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415
