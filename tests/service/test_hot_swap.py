"""Hot swap under load: zero failed requests, every response names the version that produced it."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.model_versions import approve_and_promote, train_tiny_version
from tests.server_process import ServerProcess
from tests.waiting import wait_for
from tuneloop.registry import ModelCard, Registry, State

TEXTS = ["the battery lasts all day", "stopped working after a week", "decent sound for the price",
         "I returned it", "excellent, would buy again"]


@pytest.fixture(scope="module")
def registry_with_two_versions(tmp_path_factory: pytest.TempPathFactory, small_amazon: Path, tiny_bert: Path) -> Path:
    root = tmp_path_factory.mktemp("swap") / "registry"
    v1 = train_tiny_version(root, small_amazon, tiny_bert, seed=1)
    approve_and_promote(root, v1)
    v2 = train_tiny_version(root, small_amazon, tiny_bert, seed=2)
    Registry(root).transition(v2, State.APPROVED, "test", "ready to swap")
    shutil.copytree(root, root.parent / "pristine")  # as built, for the tests below that need it unchanged
    return root


def publish_broken_copy(root: Path, source: str) -> str:
    """A version whose files are intact (checksums pass) but whose reference predictions are all
    wrong: the service's smoke check must refuse it."""
    registry = Registry(root)
    original = registry.open_version(source)
    staging = root.parent / "broken-stage"
    shutil.copytree(original.path, staging)
    (staging / "MANIFEST.json").unlink()
    with np.load(staging / "reference.npz") as ref:
        arrays = {k: ref[k] for k in ref.files}
    arrays["predictions"] = 1 - arrays["predictions"]
    np.savez_compressed(staging / "reference.npz", **arrays)
    card = ModelCard.model_validate(json.loads((staging / "card.json").read_text()))
    version = registry.publish(staging, card, actor="test", reason="deliberately broken")
    for state in (State.AWAITING_APPROVAL, State.APPROVED):
        registry.transition(version, state, "test", "to test a refused swap")
    return version


def test_swap_under_concurrent_load_has_zero_failures(registry_with_two_versions: Path, tmp_path: Path) -> None:
    root = registry_with_two_versions
    results: list[tuple[int, int, str, float]] = []  # (thread, status, version, finished_at)
    promoted_at: dict[str, float] = {}
    stop = threading.Event()
    lock = threading.Lock()

    def client(worker: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            i = 0
            while not stop.is_set():
                try:
                    r = http.post("/classify", json={"texts": [TEXTS[(worker + i) % len(TEXTS)]]})
                    version = r.json().get("model_version", "?") if r.status_code == 200 else "?"
                    status = r.status_code
                except httpx.HTTPError as exc:
                    status, version = -1, type(exc).__name__
                with lock:
                    results.append((worker, status, version, time.monotonic()))
                i += 1

    with ServerProcess(root, tmp_path / "server.log", grpc=False) as server:
        threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 240
        while len(results) < 800 and time.monotonic() < deadline:
            time.sleep(0.05)
        Registry(root).promote("v2", "test", "swap under load")
        promoted_at["v2"] = time.monotonic()
        while (len(results) < 2000 or sum(1 for r in results if r[2] == "v2") < 500) and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join()
        metrics = httpx.get(f"{server.url}/metrics").text

    failures = [r for r in results if r[1] != 200]
    assert len(results) >= 2000
    assert failures == []
    assert {r[2] for r in results} == {"v1", "v2"}
    assert all(r[2] == "v1" for r in results if r[3] < promoted_at["v2"])
    for worker in range(8):  # per client, once v2 answered, v1 never answers again
        versions = [r[2] for r in results if r[0] == worker]
        first_v2 = versions.index("v2")
        assert set(versions[first_v2:]) == {"v2"}
    assert "tuneloop_model_swaps_total 1.0" in metrics
    assert 'model_version="v2"' in metrics


def test_refused_swap_keeps_serving_the_old_version(registry_with_two_versions: Path, tmp_path: Path) -> None:
    root = registry_with_two_versions
    serving = Registry(root).production()
    with ServerProcess(root, tmp_path / "server.log", grpc=False) as server:
        broken = publish_broken_copy(root, serving)
        Registry(root).promote(broken, "test", "should be refused by the service")
        deadline = time.monotonic() + 60
        metrics = ""
        while time.monotonic() < deadline:
            metrics = httpx.get(f"{server.url}/metrics").text
            if 'tuneloop_model_swap_failures_total{reason="smoke_check"} 1.0' in metrics:
                break
            time.sleep(0.3)
        assert 'tuneloop_model_swap_failures_total{reason="smoke_check"} 1.0' in metrics
        r = httpx.post(f"{server.url}/classify", json={"texts": ["still answering"]})
        assert r.status_code == 200 and r.json()["model_version"] == serving
        assert f"cannot swap in {broken}: smoke_check" in server.tail(20000)


# ---------------------------------------------------------------------------- the watcher, supervised
@pytest.fixture
def fresh_two_versions(tmp_path: Path, registry_with_two_versions: Path) -> Path:
    """A copy of the two-version registry as built (v1 in production, v2 approved) that a test may change."""
    root = tmp_path / "registry"
    shutil.copytree(registry_with_two_versions.parent / "pristine", root)
    return root


def metric(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    import service.swap

    monkeypatch.setattr(service.swap, "RETRY_FIRST_S", 0.2, raising=False)


def failing_warm_up(monkeypatch: pytest.MonkeyPatch, version: str, times: int) -> list[int]:
    """Warm-up of ``version`` raises what ONNX Runtime raises when a GPU is out of memory, ``times`` times."""
    import service.model

    real, failed = service.model.warm_up, [0]

    def warm_up(served) -> None:
        if served.version == version and failed[0] < times:
            failed[0] += 1
            raise RuntimeError("CUDA failure 2: out of memory")
        real(served)

    monkeypatch.setattr(service.model, "warm_up", warm_up)
    return failed


def test_a_failed_warm_up_is_refused_and_retried(fresh_two_versions: Path, monkeypatch, quick_retries) -> None:
    from service.swap import ModelManager
    from tuneloop.settings import load_settings

    failed = failing_warm_up(monkeypatch, "v2", times=2)
    before = metric("tuneloop_model_swap_failures_total", reason="warm_up")
    serving = load_settings(registry=str(fresh_two_versions)).serving.model_copy(update={"poll_interval_s": 0.05})
    manager = ModelManager(Registry(fresh_two_versions), serving)
    manager.start()
    try:
        assert wait_for(lambda: manager.ready and manager.current.version == "v1")
        Registry(fresh_two_versions).promote("v2", "test", "its warm-up fails twice")
        # Refused twice (the old version keeps serving meanwhile), then tried again and swapped in.
        assert wait_for(lambda: manager.ready and manager.current.version == "v2"), manager.last_error
        assert failed[0] == 2
        assert metric("tuneloop_model_swap_failures_total", reason="warm_up") - before == 2
    finally:
        manager.stop()


def test_readiness_waits_for_the_warm_up(fresh_two_versions: Path, monkeypatch) -> None:
    """Not ready while the first model warms up: a first request must never pay for it."""
    import service.model
    from service.swap import ModelManager
    from tuneloop.settings import load_settings

    real, started, release = service.model.warm_up, threading.Event(), threading.Event()

    def warm_up(served) -> None:
        started.set()
        release.wait(30)
        real(served)

    monkeypatch.setattr(service.model, "warm_up", warm_up)
    serving = load_settings(registry=str(fresh_two_versions)).serving.model_copy(update={"poll_interval_s": 0.05})
    manager = ModelManager(Registry(fresh_two_versions), serving)
    manager.start()
    try:
        assert started.wait(30)
        time.sleep(0.3)  # several watcher periods: nothing else makes it ready
        assert not manager.ready
        release.set()
        assert wait_for(lambda: manager.ready) and manager.current.version == "v1"
    finally:
        release.set()
        manager.stop()


def test_a_failed_first_load_is_retried(fresh_two_versions: Path, monkeypatch, quick_retries) -> None:
    from service.swap import ModelManager
    from tuneloop.settings import load_settings

    failing_warm_up(monkeypatch, "v1", times=1)
    serving = load_settings(registry=str(fresh_two_versions)).serving.model_copy(update={"poll_interval_s": 0.05})
    manager = ModelManager(Registry(fresh_two_versions), serving)
    manager.start()
    try:
        assert wait_for(lambda: manager.last_error is not None)
        with pytest.raises(Exception, match="could not be loaded; the server log says why") as refused:
            manager.current
        assert str(fresh_two_versions) not in str(refused.value)  # the detail stays in the log
        assert wait_for(lambda: manager.ready), manager.last_error  # production never moved
        assert manager.current.version == "v1"
    finally:
        manager.stop()


def test_a_crashing_watcher_step_is_counted_and_turns_readiness_off(fresh_two_versions: Path, monkeypatch) -> None:
    from service.swap import ModelManager
    from tuneloop.settings import load_settings

    serving = load_settings(registry=str(fresh_two_versions)).serving.model_copy(update={"poll_interval_s": 0.05})
    manager = ModelManager(Registry(fresh_two_versions), serving)
    manager._watcher.initial_backoff_s = 0.05
    manager.start()
    try:
        assert wait_for(lambda: manager.ready)
        before = metric("tuneloop_background_errors_total", thread="tuneloop-model-watcher")
        broken = [True]
        real = manager.target_version

        def target_version():
            if broken[0]:
                raise ValueError("production.json: Expecting value: line 1 column 1 (char 0)")
            return real()

        monkeypatch.setattr(manager, "target_version", target_version)
        # It can no longer follow production: not ready, while the step keeps being retried.
        assert wait_for(lambda: not manager.ready)
        assert wait_for(lambda: metric("tuneloop_background_errors_total", thread="tuneloop-model-watcher")
                        - before >= 2)
        broken[0] = False
        assert wait_for(lambda: manager.ready)
        Registry(fresh_two_versions).promote("v2", "test", "followed after the recovery")
        assert wait_for(lambda: manager.current.version == "v2")
    finally:
        manager.stop()


def test_rollback_swaps_the_previous_version_back_in(fresh_two_versions: Path) -> None:
    from service.swap import ModelManager
    from tuneloop.settings import load_settings

    serving = load_settings(registry=str(fresh_two_versions)).serving.model_copy(update={"poll_interval_s": 0.05})
    manager = ModelManager(Registry(fresh_two_versions), serving)
    manager.start()
    try:
        assert wait_for(lambda: manager.ready and manager.current.version == "v1")
        Registry(fresh_two_versions).promote("v2", "test", "forward")
        assert wait_for(lambda: manager.current.version == "v2")
        assert Registry(fresh_two_versions).rollback("test", "live accuracy fell") == ("v2", "v1")
        assert wait_for(lambda: manager.current.version == "v1")
    finally:
        manager.stop()


def test_a_version_whose_file_fails_its_checksum_is_never_swapped_in(fresh_two_versions: Path) -> None:
    from service.swap import ModelManager
    from tuneloop.settings import load_settings

    registry = Registry(fresh_two_versions)
    graph = registry.open_version("v2").onnx_path()
    before = metric("tuneloop_model_swap_failures_total", reason="verify")
    serving = load_settings(registry=str(fresh_two_versions)).serving.model_copy(update={"poll_interval_s": 0.05})
    manager = ModelManager(registry, serving)
    assert manager.swap_to("v1")
    # Promotion verifies the files, so the damage comes after it; the watcher starts only once the file is
    # damaged, else it could load v2 in between (a race CI lost once).
    registry.promote("v2", "test", "promoted, then its graph is damaged on disk")
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    manager.start()
    try:
        assert wait_for(lambda: metric("tuneloop_model_swap_failures_total", reason="verify") > before)
        assert manager.ready and manager.current.version == "v1"
        assert "corrupt" in (manager.last_error or "")
    finally:
        manager.stop()


def test_serve_pins_a_version_runs_its_workers_and_rejects_over_long_texts(registry_with_two_versions: Path,
                                                                          tmp_path: Path) -> None:
    """`tuneloop serve --version v2 --workers 2`, with serving.on_too_long=reject, as a user runs it."""
    root = tmp_path / "registry"
    shutil.copytree(registry_with_two_versions.parent / "pristine", root)  # v1 in production, v2 approved
    env = {"TUNELOOP_SERVING__ON_TOO_LONG": "reject"}
    with ServerProcess(root, tmp_path / "server.log", grpc=False, env=env,
                       args=["--version", "v2", "--workers", "2"]) as server:
        workers = [pid for pid in server.descendants()
                   if "_bentoml_impl.worker" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")]
        assert len(workers) == 2
        with httpx.Client(base_url=server.url, timeout=60) as http:
            answers = [http.post("/classify", json={"texts": [TEXTS[i % len(TEXTS)]]}) for i in range(20)]
            assert {a.status_code for a in answers} == {200}
            assert {a.json()["model_version"] for a in answers} == {"v2"}  # not production's v1
            long = http.post("/classify", json={"texts": ["fine", "word " * 100]})
        assert long.status_code == 413
        assert re.search(r"texts\[1\] has \d+ tokens; the model reads at most 32", long.json()["error"])


def test_the_batch_limits_follow_the_provider_the_model_runs_on(fresh_two_versions: Path, monkeypatch) -> None:
    """ONNX Runtime falls back to the CPU when the CUDA provider cannot start. The limits settled for the
    provider asked for (CUDA's here, as on a GPU machine whose CUDA then failed) give way to the CPU's once a
    model is served."""
    from service import batching
    from service.batching import BatchLimits
    from service.dataplane import DataPlane
    from service.swap import ModelManager
    from tuneloop.settings import load_settings

    asked = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(batching, "choose_providers", lambda _: asked)
    serving = load_settings(registry=str(fresh_two_versions)).serving
    manager = ModelManager(Registry(fresh_two_versions), serving)
    unloaded = DataPlane(manager, serving)
    cuda, cpu = (BatchLimits.for_provider(serving, provider) for provider in asked)
    assert unloaded.batcher.limits == cuda  # nothing served yet: the provider asked for
    assert manager.swap_to("v1")
    assert unloaded.batcher.limits == cpu
    loaded = DataPlane(manager, serving)  # built over a served model: its provider from the start
    assert loaded.batcher.limits == cpu
