"""The Open Inference Protocol's binary tensor data extension, for the REST infer routes.

Why this exists: the standard REST clients use it by default. KServe's ``InferInput.set_data_from_numpy()``
and Triton's ``tritonclient.http`` send the JSON inference header first and the tensors' raw bytes after it,
with ``Inference-Header-Content-Length`` giving the header's length, and tritonclient asks for every output
in binary (``binary_data_output``) unless told otherwise. Without this, those clients get a 415.

This module is only the codec, a thin layer on each side of the one inference path: it turns such a body
into the same ``Tensor`` objects a JSON body gives (service/oip.py checks them, the DataPlane serves them)
and writes output tensors back in binary when asked. Every malformed body raises InvalidInputError (a 400
that names the problem), never anything that would become a 500.

The rules (Triton's docs/protocol/extension_binary_data.md, which KServe adopts):

- A body carries binary data when it has the ``Inference-Header-Content-Length`` header: its first N bytes
  are the JSON inference request; the rest is the binary data of the inputs that have
  ``parameters.binary_data_size``, concatenated in input order, the sizes adding up to exactly the rest.
  The spec names no Content-Type; clients send ``application/octet-stream`` (KServe) or none (Triton).
- Data is little-endian, row-major, unpadded; a BYTES element is a 4-byte unsigned length and its bytes.
- Outputs are binary when the request asks: an output's ``parameters.binary_data`` (a bool), else the
  request's ``parameters.binary_data_output`` (a bool). A binary response is the JSON response with
  ``parameters.binary_data_size`` on those outputs instead of ``data``, then their bytes in output order,
  with ``Inference-Header-Content-Length`` set.

Not supported: binary data for input datatypes other than BYTES (the model reads texts only, so such an
input is refused whatever its encoding), and the shared-memory parameters of Triton's other extensions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from service.content_type import OCTET_STREAM, media_type
from service.errors import InvalidInputError
from service.oip import Tensor, decode_bytes_elements, encode_raw_tensor

HEADER_LENGTH = "inference-header-content-length"


class InputSpec(Protocol):
    """A request input as the JSON inference header describes it (rest_oip's pydantic model)."""

    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None
    parameters: dict[str, Any] | None


class OutputSpec(Protocol):
    name: str
    parameters: dict[str, Any] | None


def is_binary_request(headers: Mapping[str, str]) -> bool:
    """Whether a body uses the extension (or says it does): it has the header, or is an octet stream."""
    return HEADER_LENGTH in headers or media_type(headers.get("content-type")) == OCTET_STREAM


def split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON inference header (a dict) and the binary data after it."""
    if header_length is None:
        raise InvalidInputError(
            "an application/octet-stream body needs the Inference-Header-Content-Length header (the length "
            "of the JSON inference header that starts the body): binary tensor data extension"
        )
    value = header_length.strip()
    if not (value.isascii() and value.isdigit()):
        raise InvalidInputError(
            f"Inference-Header-Content-Length {header_length!r} is not a non-negative integer"
        )
    length = int(value)
    if length == 0:
        raise InvalidInputError(
            "Inference-Header-Content-Length is 0: the body must start with a JSON inference header"
        )
    if length > len(body):
        raise InvalidInputError(
            f"Inference-Header-Content-Length is {length} but the body has only {len(body)} bytes"
        )
    try:
        header = json.loads(body[:length])
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidInputError(
            f"the inference header (the first {length} bytes, per Inference-Header-Content-Length) "
            f"is not valid JSON: {exc}"
        ) from None
    if not isinstance(header, dict):
        raise InvalidInputError(f"the inference header is a JSON {type(header).__name__}, not an object")
    return header, body[length:]


def _binary_size(spec: InputSpec) -> int | None:
    size = (spec.parameters or {}).get("binary_data_size")
    if size is None:
        return None
    if type(size) is not int or size < 0:  # bool is an int subclass: refuse it too
        raise InvalidInputError(
            f"input {spec.name!r} has binary_data_size {size!r}; it must be a non-negative integer"
        )
    if spec.data is not None:
        raise InvalidInputError(f"input {spec.name!r} has both data and binary_data_size; send one of them")
    if spec.datatype != "BYTES":
        raise InvalidInputError(
            f"input {spec.name!r} has binary_data_size but datatype {spec.datatype}; texts must be BYTES "
            "(binary data is read for BYTES inputs only)"
        )
    return size


def decode_inputs(inputs: Iterable[InputSpec], binary: bytes) -> list[Tensor]:
    """The request's input tensors, binary ones decoded from ``binary`` (the bytes after the header)."""
    inputs = list(inputs)
    sizes = [_binary_size(spec) for spec in inputs]
    total = sum(size for size in sizes if size is not None)
    if total != len(binary):
        raise InvalidInputError(
            f"the inputs' binary_data_size add up to {total} bytes but {len(binary)} bytes follow the "
            "inference header"
        )
    tensors, offset = [], 0
    for spec, size in zip(inputs, sizes):
        if size is None:
            if spec.data is None:
                raise InvalidInputError(
                    f"input {spec.name!r} has neither data nor parameters.binary_data_size"
                )
            tensors.append(Tensor(spec.name, spec.datatype, spec.shape, spec.data))
            continue
        tensors.append(Tensor(spec.name, spec.datatype, spec.shape,
                              decode_bytes_elements(binary[offset:offset + size], spec.name)))
        offset += size
    return tensors


def _flag(parameters: dict[str, Any] | None, key: str, where: str) -> bool | None:
    value = (parameters or {}).get(key)
    if value is not None and not isinstance(value, bool):
        raise InvalidInputError(f"{where} parameter {key} is {value!r}; it must be true or false")
    return value


def binary_outputs(request_parameters: dict[str, Any] | None, requested: Iterable[OutputSpec] | None,
                   names: Iterable[str]) -> set[str]:
    """Which of the outputs ``names`` the request wants in binary: an output's binary_data, else the
    request's binary_data_output. Raises for a flag that isn't a bool, so call it before the work."""
    default = bool(_flag(request_parameters, "binary_data_output", "the request's"))
    per_output = {spec.name: _flag(spec.parameters, "binary_data", f"output {spec.name!r}")
                  for spec in requested or ()}
    chosen = {name: per_output.get(name) for name in names}
    return {name for name, flag in chosen.items() if (default if flag is None else flag)}


def encode_response(header: dict[str, Any], tensors: Iterable[Tensor], binary: set[str]) -> tuple[bytes, int]:
    """The response body (JSON header, then the binary outputs' bytes) and the header's length."""
    outputs, blobs = [], []
    for tensor in tensors:
        output: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if tensor.name in binary:
            blob = encode_raw_tensor(tensor)
            output["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            output["data"] = tensor.data
        outputs.append(output)
    head = json.dumps({**header, "outputs": outputs}, separators=(",", ":")).encode()
    return head + b"".join(blobs), len(head)
