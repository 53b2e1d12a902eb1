"""``service.oip.infer``, the one Open Inference Protocol infer path REST and gRPC both call, in-process."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest

from service import oip
from service.dataplane import ClassifyResult, DataPlane
from service.errors import InvalidInputError, ModelNotFoundError, ModelNotReadyError, ServiceError
from service.oip import OUTPUT_NAMES, Tensor
from tests.service.conftest import classify_now

TEXTS = ["great phone, love it", "battery died after a day"]
GOOD = Tensor("text", "BYTES", [2], [TEXTS[0].encode(), TEXTS[1]])  # bytes and str both decode
BAD = Tensor("text", "FP32", [1], [1.0])


def infer(plane: DataPlane, name: str = "sentiment", version: str | None = None,
          inputs: list[Tensor] | None = None, requested: list[str] | None = None) -> oip.InferResult:
    return asyncio.run(oip.infer(plane, name, version, [GOOD] if inputs is None else inputs, requested))


def test_answers_every_output_for_the_served_version(dataplane: DataPlane) -> None:
    served = dataplane.model()
    answer = infer(dataplane, version=served.version)
    assert (answer.model_name, answer.model_version) == (served.model_name, served.version)
    assert [t.name for t in answer.outputs] == list(OUTPUT_NAMES)
    probabilities, label, request_id = answer.outputs
    expected = classify_now(dataplane, TEXTS)
    assert probabilities.shape == [2, len(served.labels)]
    np.testing.assert_allclose(np.reshape(probabilities.data, probabilities.shape), expected.probabilities,
                               atol=1e-5)
    assert label.data == [p.label for p in expected.predictions]
    assert len(set(request_id.data)) == 2  # a fresh id a row, the one feedback refers to


@pytest.mark.parametrize(("requested", "names"), [
    (["label", "probabilities"], ["label", "probabilities"]),
    (["request_id"], ["request_id"]),
    ([], list(OUTPUT_NAMES)),
])
def test_answers_the_requested_outputs_in_the_requested_order(dataplane: DataPlane, requested: list[str],
                                                               names: list[str]) -> None:
    assert [t.name for t in infer(dataplane, requested=requested).outputs] == names


@pytest.mark.parametrize(
    ("name", "version", "inputs", "requested", "error", "message"),
    [
        ("nope", None, [BAD], ["logits"], ModelNotFoundError, "unknown model 'nope'"),
        ("sentiment", "v9", [BAD], ["logits"], ModelNotFoundError, "'v9' is not served"),
        ("sentiment", None, [BAD], ["logits"], InvalidInputError, "datatype FP32"),
        ("sentiment", None, [GOOD, GOOD], None, InvalidInputError, "exactly one input tensor"),
        ("sentiment", None, [GOOD], ["label", "logits"], InvalidInputError, "unknown output(s) ['logits']"),
    ],
    ids=["unknown-model-first", "unknown-version-first", "inputs-before-outputs", "two-inputs", "unknown-output"],
)
def test_each_check_fails_in_turn_before_the_work(dataplane: DataPlane, monkeypatch: pytest.MonkeyPatch,
                                                  name: str, version: str | None, inputs: list[Tensor],
                                                  requested: list[str] | None, error: type[ServiceError],
                                                  message: str) -> None:
    async def no_work(texts: object) -> ClassifyResult:
        raise AssertionError("classified a request that should have failed first")

    monkeypatch.setattr(dataplane, "classify", no_work)
    with pytest.raises(error) as info:
        infer(dataplane, name, version, inputs, requested)
    assert message in info.value.message


def test_a_swap_during_the_wait_is_not_answered_for_another_version(dataplane: DataPlane,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    classify = dataplane.classify

    async def swapped(texts: object) -> ClassifyResult:
        return dataclasses.replace(await classify(texts), model_version="v-next")

    monkeypatch.setattr(dataplane, "classify", swapped)
    served = dataplane.model().version
    with pytest.raises(ModelNotReadyError, match=f"version {served} was swapped out"):
        infer(dataplane, version=served)
    # Asked for whichever is served, the new version's answer is the right one, and it says so.
    assert infer(dataplane).model_version == "v-next"
