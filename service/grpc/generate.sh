#!/usr/bin/env bash
# Regenerate the Open Inference Protocol v2 stubs from grpc_predict_v2.proto (KServe's
# docs/predict-api/v2/grpc_predict_v2.proto, unchanged). Run from anywhere; needs grpcio-tools (dev extra):
#   PYTHON=.venv/bin/python service/grpc/generate.sh
# Two edits to protoc's output, both needed for the stubs to load next to other OIP stubs:
# 1. *_pb2_grpc.py imports its messages as a top-level module; make that package-relative so the
#    stubs load as service.grpc.* without touching sys.path.
# 2. *_pb2.py registers the file in protobuf's process-wide default pool. tritonclient
#    (grpc_service.proto) and kserve (grpc_predict_v2.proto) register the same `inference.*`
#    names there, and a second registration is a "duplicate symbol" TypeError at import. A private
#    pool keeps the wire format identical and lets all of them live in one process.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python}"
"$python" -m grpc_tools.protoc -I "$here" --python_out="$here" --pyi_out="$here" --grpc_python_out="$here" \
  "$here/grpc_predict_v2.proto"
sed -i 's/^import grpc_predict_v2_pb2 as /from . import grpc_predict_v2_pb2 as /' "$here/grpc_predict_v2_pb2_grpc.py"
sed -i 's/^DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(/_POOL = _descriptor_pool.DescriptorPool()  # private, see generate.sh\nDESCRIPTOR = _POOL.AddSerializedFile(/' \
  "$here/grpc_predict_v2_pb2.py"
grep -q '^DESCRIPTOR = _POOL.AddSerializedFile(' "$here/grpc_predict_v2_pb2.py"  # fail loudly if protoc's output changed
