"""Protobuf ⇄ ``service.oip.Tensor``: the only part of the protocol that differs between gRPC and REST.

Validation of the tensors themselves (datatype, shape, element count, UTF-8) stays in ``service.oip``
so both transports reject the same requests with the same messages. What is checked here is what
REST cannot express: how ``raw_input_contents`` lines up with ``inputs``, and the raw BYTES framing.
"""

from __future__ import annotations

from service.errors import InvalidInputError
from service.grpc import grpc_predict_v2_pb2 as pb
from service.oip import Tensor, decode_bytes_elements, encode_raw_tensor

def input_tensors(request: pb.ModelInferRequest) -> list[Tensor]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInputError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} input(s); "
            "send one per input, in the order of inputs"
        )
    tensors = []
    for i, tensor in enumerate(request.inputs):
        if raw and tensor.HasField("contents"):
            raise InvalidInputError(
                f"input {tensor.name!r} has contents although the request uses raw_input_contents; "
                "use one or the other"
            )
        # Only BYTES is ever read: service.oip rejects any other datatype before it looks at the data.
        data: list = []
        if tensor.datatype == "BYTES":
            data = decode_bytes_elements(raw[i], tensor.name) if raw else list(tensor.contents.bytes_contents)
        tensors.append(Tensor(tensor.name, tensor.datatype, list(tensor.shape), data))
    return tensors


def _output(tensor: Tensor, raw: bool) -> tuple[pb.ModelInferResponse.InferOutputTensor, bytes | None]:
    out = pb.ModelInferResponse.InferOutputTensor(name=tensor.name, datatype=tensor.datatype,
                                                  shape=tensor.shape)
    if raw:
        return out, encode_raw_tensor(tensor)
    if tensor.datatype == "FP32":
        out.contents.fp32_contents.extend(tensor.data)
    elif tensor.datatype == "BYTES":
        out.contents.bytes_contents.extend(s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in tensor.data)
    else:  # a new output in service.oip needs its encoding here
        raise TypeError(f"no gRPC encoding for output {tensor.name!r} of datatype {tensor.datatype}")
    return out, None


def infer_response(model_name: str, model_version: str, request_id: str, outputs: list[Tensor],
                   raw: bool) -> pb.ModelInferResponse:
    """Raw outputs answer raw inputs: tritonclient only ever sends raw, and its ``InferResult.as_numpy``
    reads FP32 only from ``raw_output_contents`` (typed contents come back empty), as Triton answers."""
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id)
    for tensor in outputs:
        out, raw_content = _output(tensor, raw)
        response.outputs.append(out)
        if raw_content is not None:
            response.raw_output_contents.append(raw_content)
    return response
