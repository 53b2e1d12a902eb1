"""The Open Inference Protocol v2 (KServe / Triton) as tuneloop speaks it, for REST and gRPC alike.

Input: one BYTES tensor of texts, shape ``[n]`` or ``[n, 1]``. Outputs: ``probabilities`` (FP32,
``[n, labels]``), ``label`` (BYTES, ``[n]``) and ``request_id`` (BYTES, ``[n]``, the id feedback refers to).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from math import prod

import numpy as np

from service.dataplane import ClassifyResult, DataPlane
from service.errors import InvalidInputError, ModelNotReadyError
from service.model import ServedModel

_LENGTH = struct.Struct("<I")  # a raw BYTES element: its 4-byte little-endian length, then the bytes

SERVER_NAME = "tuneloop"
INPUT_NAME = "text"
OUTPUT_NAMES = ("probabilities", "label", "request_id")


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: list  # flat, row-major


@dataclass(frozen=True)
class InferResult:
    """What the protocol answers an infer request with, before a transport encodes it."""

    model_name: str
    model_version: str  # the version that answered, which the response must name
    outputs: list[Tensor]


def decode_bytes_elements(raw: bytes, name: str) -> list[bytes]:
    """A BYTES tensor in the protocol's raw form (gRPC's raw_input_contents, REST's binary extension):
    each element a 4-byte little-endian length, then that many bytes."""
    elements: list[bytes] = []
    position, end = 0, len(raw)
    while position < end:
        if end - position < _LENGTH.size:
            raise InvalidInputError(f"input {name!r} element {len(elements)}: its 4-byte length prefix is cut off "
                                    f"({end - position} byte(s) left of the input's {end})")
        (length,) = _LENGTH.unpack_from(raw, position)
        position += _LENGTH.size
        if length > end - position:
            raise InvalidInputError(f"input {name!r} element {len(elements)} claims {length} bytes but "
                                    f"{end - position} remain")
        elements.append(raw[position:position + length])
        position += length
    return elements


def encode_raw_tensor(tensor: Tensor) -> bytes:
    """An output tensor in the protocol's raw form: FP32 little-endian, BYTES length-prefixed elements."""
    if tensor.datatype == "FP32":
        return np.asarray(tensor.data, dtype="<f4").tobytes()
    if tensor.datatype == "BYTES":
        items = [item.encode() if isinstance(item, str) else bytes(item) for item in tensor.data]
        return b"".join(_LENGTH.pack(len(item)) + item for item in items)
    raise ValueError(f"no raw encoding for datatype {tensor.datatype}")  # our outputs are FP32 and BYTES


def texts_from_inputs(inputs: list[Tensor]) -> list[str]:
    if len(inputs) != 1:
        raise InvalidInputError(f"expected exactly one input tensor (BYTES texts), got {len(inputs)}")
    tensor = inputs[0]
    if tensor.datatype != "BYTES":
        raise InvalidInputError(f"input {tensor.name!r} has datatype {tensor.datatype}; texts must be BYTES")
    if not tensor.shape or any(not isinstance(d, int) or d < 0 for d in tensor.shape):
        raise InvalidInputError(f"input {tensor.name!r} has an invalid shape {tensor.shape}")
    if len(tensor.shape) > 2 or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
        raise InvalidInputError(f"input {tensor.name!r} must have shape [n] or [n, 1], got {tensor.shape}")
    if prod(tensor.shape) != len(tensor.data):
        raise InvalidInputError(
            f"input {tensor.name!r} has shape {tensor.shape} but {len(tensor.data)} elements"
        )
    texts = []
    for i, item in enumerate(tensor.data):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInputError(f"input {tensor.name!r} element {i} is not valid UTF-8: {exc.reason}") from None
        if not isinstance(item, str):
            raise InvalidInputError(f"input {tensor.name!r} element {i} is {type(item).__name__}, not a string")
        texts.append(item)
    return texts


async def infer(plane: DataPlane, name: str, version: str | None, inputs: list[Tensor],
                requested: list[str] | None) -> InferResult:
    """The protocol's one infer path, for REST and gRPC alike (as MLServer's ``DataPlane.infer`` is): the
    transports only decode a request into ``inputs`` and encode the answer. ``version`` None means
    whichever is served; ``requested`` None or empty means every output, in OUTPUT_NAMES' order.

    Each check runs once, the cheap ones before the work: an unknown name or version, then the inputs,
    then the requested outputs; the swap race can only be seen after it."""
    plane.model(name, version)  # 404 / NOT_FOUND before any work for an unknown name or version
    texts = texts_from_inputs(inputs)
    unknown = sorted(set(requested or ()) - set(OUTPUT_NAMES))
    if unknown:  # fail before the work, not after
        raise InvalidInputError(f"unknown output(s) {unknown}; this model has {list(OUTPUT_NAMES)}")
    result = await plane.classify(texts)
    if version is not None and result.model_version != version:
        # A swap landed between the check and the batch: say so rather than answer for another version.
        raise ModelNotReadyError(f"version {version} was swapped out while the request waited; retry")
    outputs = _output_tensors(result, requested or OUTPUT_NAMES)
    return InferResult(result.model_name, result.model_version, outputs)


def _output_tensors(result: ClassifyResult, names: Iterable[str]) -> list[Tensor]:
    n = len(result.predictions)
    tensors = {
        "probabilities": Tensor("probabilities", "FP32", list(result.probabilities.shape),
                                result.probabilities.reshape(-1).tolist()),
        "label": Tensor("label", "BYTES", [n], [p.label for p in result.predictions]),
        "request_id": Tensor("request_id", "BYTES", [n], [p.request_id for p in result.predictions]),
    }
    return [tensors[name] for name in names]


def model_metadata(served: ServedModel) -> dict:
    return {
        "name": served.model_name,
        "versions": [served.version],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(served.labels)]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "request_id", "datatype": "BYTES", "shape": [-1]},
        ],
        "parameters": {"labels": served.labels, "provider": served.provider, "precision": served.precision},
    }


def server_metadata(version: str) -> dict:
    return {"name": SERVER_NAME, "version": version, "extensions": ["model_repository_health"]}
