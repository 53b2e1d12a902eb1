"""The Open Inference Protocol v2 over gRPC (``inference.GRPCInferenceService``), served by grpcio
beside BentoML.

``grpc_predict_v2_pb2*.py`` are generated: edit ``grpc_predict_v2.proto`` and run ``generate.sh``.
"""
