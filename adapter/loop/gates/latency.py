"""The candidate's graph is not much slower than production's: p95 latency of the same requests, measured
side by side (runs interleaved, so a busy machine slows both alike) in sessions opened with the service's own
options (threads, spinning), as the parity gate's sessions are not."""

from __future__ import annotations

import time

import numpy as np
from pydantic import Field

from adapter.loop.gates.base import Evidence, Gate, GateConfig, Graph
from tuneloop.inference import OnnxTextClassifier, choose_providers
from tuneloop.registry import GateResult
from tuneloop.settings import ServingSettings


WARM_UP = 10


class LatencyConfig(GateConfig):
    max_ratio: float = Field(1.5, gt=0, description="candidate p95 / production p95 may be at most this")
    # 200: a p95 of 40 runs is the second-slowest, which one scheduling hiccup on a busy host decides (the same
    # graph twice measured 1.57× once); of 200 it is the tenth-slowest, and the runs alternate between the graphs.
    runs: int = Field(200, ge=20, description="timed requests per graph")
    batch: int = Field(1, ge=1, description="texts per request: 1 is a lone request, the latency a client sees")


def open_as_served(graph: Graph, serving: ServingSettings) -> OnnxTextClassifier:
    return OnnxTextClassifier(graph.onnx_path, graph.tokenizer_dir,
                              max_length=min(serving.max_tokens, graph.max_length),
                              providers=choose_providers(serving.provider),
                              intra_op_threads=serving.intra_op_threads, spinning=serving.ort_spinning)


class LatencyGate(Gate):
    name = "latency"
    Config = LatencyConfig

    def judge(self, evidence: Evidence) -> GateResult:
        config = self.config
        sessions = {which: open_as_served(evidence.graphs[which], evidence.serving)
                    for which in ("production", "candidate")}
        texts = evidence.sample_texts or ["a short sentence to time"]
        seconds: dict[str, list[float]] = {which: [] for which in sessions}
        for run in range(config.runs + WARM_UP):  # the first runs pay for arena allocation: not counted
            batch = [texts[(run * config.batch + k) % len(texts)] for k in range(config.batch)]
            for which, session in sessions.items():
                began = time.perf_counter()
                session.predict(batch)
                if run >= WARM_UP:
                    seconds[which].append(time.perf_counter() - began)
        p95 = {which: float(np.percentile(values, 95)) * 1000 for which, values in seconds.items()}
        ratio = p95["candidate"] / p95["production"]
        figures = {"production_p95_ms": round(p95["production"], 3), "candidate_p95_ms": round(p95["candidate"], 3),
                   "ratio": round(ratio, 3), "max_ratio": config.max_ratio, "runs": config.runs,
                   "batch": config.batch}
        reasons = [] if ratio <= config.max_ratio else [
            f"p95 {p95['candidate']:.2f} ms against production's {p95['production']:.2f} ms: {ratio:.2f}× "
            f"(at most {config.max_ratio:g}×)"]
        return GateResult(name=self.name, passed=not reasons, figures=figures, reasons=reasons)
