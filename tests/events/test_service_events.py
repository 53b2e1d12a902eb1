"""A real service process logging to a real broker: predictions, feedback, outages and a crash."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from tests.events.conftest import consume_until
from tests.server_process import ServerProcess
from tuneloop.events.broker import TansuBroker
from tuneloop.settings import KafkaSettings

@pytest.fixture(scope="module")
def logging_server(served_registry: Path, tmp_path_factory: pytest.TempPathFactory):
    """One service with its event log on, for the tests that only talk to it."""
    folder = tmp_path_factory.mktemp("logging-server")
    with TansuBroker(log_path=folder / "tansu.log") as broker:
        settings = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, spool_dir=folder / "spool")
        with ServerProcess(served_registry, folder / "server.log", grpc=False, env=logging_env(settings)) as server:
            yield server


TEXTS = [f"review number {i}: the phone is {'great' if i % 2 else 'awful'}" for i in range(12)]


def logging_env(settings: KafkaSettings) -> dict[str, str]:
    return {"TUNELOOP_KAFKA__ENABLED": "true", "TUNELOOP_KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "TUNELOOP_SPOOL_DIR": str(settings.spool_dir)}


def counter(server: ServerProcess, name: str, topic: str = "tuneloop.predictions") -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return sum(float(v) for v in re.findall(rf'^{name}{{topic="{re.escape(topic)}"}} (\S+)$', text, re.M))


def test_predictions_and_feedback_reach_their_topics(served_registry: Path, broker: TansuBroker,
                                                     kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    broker.start()
    with ServerProcess(served_registry, tmp_path / "server.log", grpc=False, env=logging_env(kafka_settings)) as server:
        body = httpx.post(f"{server.url}/classify", json={"texts": TEXTS}).json()
        ids = [p["request_id"] for p in body["predictions"]]
        single = httpx.post(f"{server.url}/feedback", json={"request_id": ids[0], "label": "1", "source": "qa"})
        assert single.status_code == 202 and single.json() == {"accepted": 1}
        batch = httpx.post(f"{server.url}/feedback",
                           json={"feedback": [{"request_id": i, "label": "0"} for i in ids[1:4]]})
        assert batch.json() == {"accepted": 3}
        predictions = consume_until(kafka_settings, ["predictions"], len(TEXTS))
        feedback = consume_until(kafka_settings, ["feedback"], 4)
    by_id = {e.data.request_id: e.data for e in predictions}
    assert set(by_id) == set(ids)
    first = by_id[ids[0]]
    assert (first.model_name, first.model_version, first.text) == ("sentiment", "v1", TEXTS[0])
    assert first.embedding_vector().shape == (32,)  # the tiny model's pooled embedding
    assert first.label == body["predictions"][0]["label"]
    assert sorted(e.data.request_id for e in feedback) == sorted(ids[:4])
    assert {e.data.source for e in feedback} == {"qa", "api"}


def test_broker_down_at_start_then_every_prediction_arrives(served_registry: Path, broker: TansuBroker,
                                                            kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    with ServerProcess(served_registry, tmp_path / "server.log", grpc=False, env=logging_env(kafka_settings)) as server:
        ids = []
        for i in range(0, len(TEXTS), 3):
            r = httpx.post(f"{server.url}/classify", json={"texts": TEXTS[i:i + 3]})
            assert r.status_code == 200  # the broker's absence costs the client nothing
            ids += [p["request_id"] for p in r.json()["predictions"]]
        deadline = time.monotonic() + 30
        while counter(server, "tuneloop_events_spooled_total") < len(ids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert counter(server, "tuneloop_events_spooled_total") == len(ids)
        broker.start()
        got = consume_until(kafka_settings, ["predictions"], len(ids))
        assert sorted(e.data.request_id for e in got) == sorted(ids)
        assert counter(server, "tuneloop_events_replayed_total") >= len(ids)
        assert counter(server, "tuneloop_events_dropped_total") == 0


def test_service_killed_with_a_full_spool_replays_after_restart(served_registry: Path, broker: TansuBroker,
                                                                kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    env = logging_env(kafka_settings) | {"TUNELOOP_KAFKA__SPOOL_FSYNC": "always"}
    server = ServerProcess(served_registry, tmp_path / "first.log", grpc=False, env=env).start()
    ids = [p["request_id"] for p in httpx.post(f"{server.url}/classify", json={"texts": TEXTS}).json()["predictions"]]
    deadline = time.monotonic() + 30
    while counter(server, "tuneloop_events_spooled_total") < len(ids) and time.monotonic() < deadline:
        time.sleep(0.2)
    server.crash()  # every process of it SIGKILLed: no drain, no goodbye
    assert list(kafka_settings.spool_dir.glob("*.spool"))
    broker.start()
    with ServerProcess(served_registry, tmp_path / "second.log", grpc=False, env=env):
        got = consume_until(kafka_settings, ["predictions"], len(ids))
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
