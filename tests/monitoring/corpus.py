"""The drift quality bar's data: a version trained by `tuneloop train`, and traffic sent through the service.

The version is MiniLM fine-tuned on the amazon sentences (tests/trained_versions.py). Its reference sample is
its own ``reference.npz`` (the validation split, as the monitor loads it from the registry). The live traffic
is what a real `tuneloop serve` of that version logged on ``tuneloop.predictions`` for: the amazon sentences
it never saw in training or validation (its test split, 400), and every yelp and imdb sentence (the shifted
domains) — ONNX embeddings sent as float16, probabilities and labels exactly as the monitor receives them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from tests.conftest import IMDB, YELP, read_sentences
from tests.fixtures.broker import consume_until, isolated_settings, kafka_env
from tests.server_process import ServerProcess
from tests.trained_versions import TrainedVersion
from tuneloop.registry import Registry

REQUEST_TEXTS = 16  # texts per /classify request


@dataclass(frozen=True)
class Scenario:
    """A reference sample as a registered version keeps it, the held-out pool, and shifted domains."""

    reference: dict[str, np.ndarray]  # the layout of ModelVersion.reference()
    held_out: dict[str, np.ndarray]
    shifted: dict[str, dict[str, np.ndarray]]  # "yelp", "imdb"
    labels: list[str]


def served_scenario(trained: TrainedVersion, workdir: Path, bootstrap_servers: str) -> Scenario:
    """Serve ``trained`` with the event log on, send it the held-out amazon sentences and the shifted domains'
    sentences, and read back the prediction events it logged."""
    kafka = isolated_settings(bootstrap_servers, workdir / "spool", partitions=1)
    root = trained.registry_copy(workdir / "registry")
    labels = Registry(root).card(trained.version).labels
    domains = {
        "amazon": (trained.data.test.texts, trained.data.test.labels),
        **{name: ([t for t, _ in rows], [labels.index(y) for _, y in rows])
           for name, rows in (("yelp", read_sentences(YELP)), ("imdb", read_sentences(IMDB)))},
    }
    env = kafka_env(kafka)
    sent: dict[str, tuple[str, int]] = {}  # request id → (domain, row)
    with ServerProcess(root, workdir / "server.log", grpc=False, env=env) as server, \
            httpx.Client(base_url=server.url, timeout=60) as http:
        for domain, (texts, _) in domains.items():
            for start in range(0, len(texts), REQUEST_TEXTS):
                answer = http.post("/classify", json={"texts": texts[start:start + REQUEST_TEXTS]})
                answer.raise_for_status()
                for k, prediction in enumerate(answer.json()["predictions"]):
                    sent[prediction["request_id"]] = (domain, start + k)
        events = consume_until(kafka, ["predictions"], len(sent), timeout=180)
    logged = {e.data.request_id: e.data for e in events if e.data.request_id in sent}
    if len(logged) != len(sent):
        raise RuntimeError(f"{len(sent) - len(logged)} of {len(sent)} predictions never reached the topic")
    rows: dict[str, dict[str, list]] = {d: {"texts": [], "labels": [], "probabilities": [], "embeddings": []}
                                        for d in domains}
    for request_id, (domain, i) in sorted(sent.items(), key=lambda item: item[1]):
        event = logged[request_id]
        texts, truth = domains[domain]
        rows[domain]["texts"].append(texts[i])
        rows[domain]["labels"].append(truth[i])
        rows[domain]["probabilities"].append([event.probabilities[name] for name in labels])
        rows[domain]["embeddings"].append(event.embedding_vector())
    arrays = {}
    for domain, columns in rows.items():
        probabilities = np.asarray(columns["probabilities"], dtype=np.float32)
        arrays[domain] = {"texts": np.asarray(columns["texts"], dtype=str),
                          "labels": np.asarray(columns["labels"], dtype=np.int64),
                          "probabilities": probabilities, "predictions": probabilities.argmax(1).astype(np.int64),
                          "embeddings": np.stack(columns["embeddings"]).astype(np.float32)}
    reference = Registry(root).open_version(trained.version).reference()
    return Scenario(reference=reference, held_out=arrays["amazon"],
                    shifted={"yelp": arrays["yelp"], "imdb": arrays["imdb"]}, labels=labels)


def no_repeat_stream(pool_size: int, length: int, window: int, rng: np.random.Generator) -> np.ndarray:
    """Indices into a pool, drawn at random so that no ``window`` consecutive ones repeat a row.

    The held-out pool (400 sentences) is smaller than 20 windows of traffic, so rows must recur; a row twice
    in one window would let Evidently's domain classifier memorise it and inflate the embedding score,
    which real traffic (distinct requests) does not do.
    """
    if pool_size < window:
        raise ValueError(f"a pool of {pool_size} cannot fill a window of {window} without repeats")
    recent: list[int] = []
    blocked: set[int] = set()
    out = np.empty(length, dtype=np.int64)
    for n in range(length):
        while (pick := int(rng.integers(pool_size))) in blocked:
            pass
        out[n] = pick
        recent.append(pick)
        blocked.add(pick)
        if len(recent) >= window:
            blocked.discard(recent.pop(0))
    return out


def observations(rows: dict[str, np.ndarray], indices, version: str = "v1", start: float = 1.8e9):
    from monitoring.window import Observation

    for n, i in enumerate(indices):
        yield Observation(
            version,
            rows["embeddings"][i],
            rows["probabilities"][i],
            int(rows["predictions"][i]),
            str(rows["texts"][i]),
            start + n,
        )


def run_stream(
    scenario: Scenario,
    settings,
    domain: str,
    in_domain_windows: int,
    seed: int,
    after_windows: int = 3,
    keep_reports: bool = False,
):
    """Evaluations of a real DriftMonitor on held-out amazon traffic, then after a switch to ``domain``.

    Returns (monitor, evaluations before the switch, evaluations after it): ``in_domain_windows`` before, and
    ``after_windows`` after. Count windows: the switch falls on an evaluation boundary, so the first
    evaluation after it already holds ``window_step`` shifted rows. Time windows: each window holds twice the
    sample (the reservoir picks its rows, no row twice) and the switch falls in the middle of a window, so
    the first window after it is half shifted, as with count windows.
    """
    from monitoring.monitor import DriftMonitor
    from monitoring.reference import reference_from_arrays

    reference = reference_from_arrays("v1", scenario.labels, scenario.reference)
    monitor = DriftMonitor(settings, lambda version: reference, keep_reports=keep_reports)
    rng = np.random.default_rng(seed)
    shifted = scenario.shifted[domain]
    if settings.window_mode == "time":
        return (monitor, *_run_time_windows(monitor, scenario.held_out, shifted, settings, in_domain_windows,
                                            after_windows, rng))
    n_before = settings.window_size + (in_domain_windows - 1) * settings.window_step
    held = no_repeat_stream(len(scenario.held_out["texts"]), n_before, settings.window_size, rng)
    before = [e for o in observations(scenario.held_out, held) if (e := monitor.observe(o))]
    after_idx = rng.permutation(len(shifted["texts"]))[: after_windows * settings.window_step]
    after = [e for o in observations(shifted, after_idx, start=2e9) if (e := monitor.observe(o))]
    return monitor, before, after


def _run_time_windows(monitor, held_out, shifted, settings, in_domain_windows, after_windows, rng):
    per_window = min(2 * settings.max_window_sample, len(held_out["texts"]), len(shifted["texts"]))
    if per_window < settings.min_window_sample:
        raise ValueError(f"the pools cannot fill a window of {settings.min_window_sample} distinct predictions")
    spacing = settings.window_seconds / per_window
    start = 1.8e9 - 1.8e9 % settings.window_seconds  # a window boundary
    n_before = in_domain_windows * per_window + per_window // 2
    n_after = per_window - per_window // 2 + (after_windows - 1) * per_window
    held = no_repeat_stream(len(held_out["texts"]), n_before, per_window, rng)
    moved = no_repeat_stream(len(shifted["texts"]), n_after, per_window, rng)
    rows = [*observations(held_out, held, start=start),
            *observations(shifted, moved, start=start + n_before)]
    evaluations = []
    for n, o in enumerate(rows):
        o = dataclasses.replace(o, timestamp=start + n * spacing)
        if evaluation := monitor.observe(o):
            evaluations.append(evaluation)
    evaluations += monitor.close_windows(start + len(rows) * spacing + settings.window_grace_seconds)
    return evaluations[:in_domain_windows], evaluations[in_domain_windows:]
