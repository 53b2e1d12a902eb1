"""ONNX export, graph optimisation, quantisation and the parity check against PyTorch."""
