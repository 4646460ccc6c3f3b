"""How native TensorRT types a network: from the precision the ONNX graph computes in (no tensorrt, no CUDA).

ezvtb's fp16 graphs keep uint8 frames (RIFE, SR) or float32 poses at their inputs and outputs and
compute in float16 inside: the weights are float16 initializers and the inputs are cast to float16.
Looking at the graph's inputs and outputs alone would call those graphs fp32 and build them weakly
typed without the FP16 flag, i.e. in fp32. So the decision reads the whole graph:

  * a graph with any float16 tensor (input, output, initializer, value_info, a Cast or Constant to
    float16, in subgraphs too) is built **strongly typed**: every layer runs in the precision the
    graph gives it (float16 convolutions; the grid math the export keeps in float32 stays there);
  * a graph without one is built weakly typed (fp32 unless the caller asks for the FP16 flag).

Reading the graph needs the `onnx` package (part of ezvtb[tensorrt]); without it the graph's
inputs and outputs decide, with a warning.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Iterator

from ezvtb.engines.base import GraphSpec

log = logging.getLogger("ezvtb.engines.trt")

_found: dict[tuple[str, int, int], str] = {}


def _fp16_in_graph(graph: Any, fp16: int) -> Iterator[str]:
    for vi in (*graph.input, *graph.output, *graph.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type == fp16:
            yield f"tensor {vi.name!r}"
    for t in graph.initializer:
        if t.data_type == fp16:
            yield f"initializer {t.name!r}"
    for node in graph.node:
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == fp16:
                yield f"Cast node {node.name!r} to float16"
            elif a.HasField("t") and a.t.data_type == fp16:
                yield f"{node.op_type} node {node.name!r} with a float16 value"
            if a.HasField("g"):
                yield from _fp16_in_graph(a.g, fp16)
            for g in a.graphs:
                yield from _fp16_in_graph(g, fp16)


def float16_evidence(model_path: str | os.PathLike) -> str:
    """The first float16 tensor found in the ONNX graph (e.g. ``initializer 'conv.weight'``), or ""
    for a graph without one. Memoised by path, size and mtime. Needs the `onnx` package."""
    import onnx

    p = os.fspath(model_path)
    st = os.stat(p)
    key = (os.path.abspath(p), st.st_size, st.st_mtime_ns)
    if key not in _found:
        model = onnx.load(p, load_external_data=False)
        _found[key] = next(_fp16_in_graph(model.graph, onnx.TensorProto.FLOAT16), "")
    return _found[key]


def strongly_typed_for(model_path: str | os.PathLike, spec: GraphSpec) -> bool:
    """True when TensorRT should build `model_path` as a strongly typed network (it computes in
    float16 somewhere); see the module docstring."""
    try:
        evidence = float16_evidence(model_path)
    except ImportError:
        typed = any(t.dtype == "float16" for t in (*spec.inputs, *spec.outputs))
        log.warning("%s: the `onnx` package is missing (pip install onnx, part of ezvtb[tensorrt]), so the "
                    "network's typing follows the graph's inputs and outputs only (%s): a graph that computes "
                    "in float16 behind uint8 or float32 inputs is then built in fp32",
                    spec.name, "strongly typed" if typed else "weakly typed")
        return typed
    if evidence:
        log.debug("%s: strongly typed TensorRT network (%s)", spec.name, evidence)
    return bool(evidence)
