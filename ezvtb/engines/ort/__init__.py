"""ONNX Runtime backend: CPU, CUDA, TensorRT execution provider and DirectML."""
from ezvtb.engines.ort.session import OrtSession, OrtOptions, resolve_providers

__all__ = ["OrtSession", "OrtOptions", "resolve_providers"]
