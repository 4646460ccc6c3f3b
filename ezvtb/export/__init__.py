"""Exporting models to ONNX through one exporter (`ezvtb.export.exporter`), cached by what each graph depends on.

`tha3_graphs` (the five THA3 stage graphs), `ezvtb.export.rife.rife_graph`, `ezvtb.export.sr.sr_graph` and
`ezvtb.export.facetrack.facetrack_graph` are recipes for `export_graph`; `export_module` exports any module.
Importable without torch: torch is imported only when a graph actually has to be exported.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ezvtb.export.errors import ExportError
from ezvtb.export.exporter import EXPORTER_VERSION, Recipe, export_graph, graph_path
from ezvtb.export.onnx_file import is_complete
from ezvtb.export.quiet import progress_logging
from ezvtb.models.tha3.spec import STAGES, graph_spec, onnx_file_name

log = logging.getLogger("ezvtb.export")


def tha3_recipe(stage: str, variant: str, precision: str, weights_digest: str, poser: Any) -> Recipe:
    """The recipe of one THA3 stage graph; `poser()` returns the loaded `ThaPoser` (shared by the stages).

    The module is the stage wrapper over a copy of the poser with the exact export rewrites
    (`ezvtb.export.tha3.REWRITES`); its fidelity to upstream is measured by the tests, not at export.
    """
    def module() -> Any:
        from ezvtb.export.tha3 import REWRITES, optimize_for_export, stage_module  # needs torch

        return stage_module(optimize_for_export(poser(), REWRITES), stage)

    def example_inputs() -> Any:
        from ezvtb.export.tha3 import example_inputs as inputs

        return inputs(stage, precision)

    return Recipe("tha3", onnx_file_name(stage, variant, precision).removesuffix(".onnx"),
                  graph_spec(stage, precision), f"tha3|{weights_digest}|{variant}|{precision}", module,
                  example_inputs)


def tha3_graphs(variant: str = "separable", precision: str = "fp32", weights_dir: str | os.PathLike | None = None,
                out_dir: str | os.PathLike | None = None, progress: bool = True) -> dict[str, Path]:
    """Paths of the five THA3 stage graphs, exporting them on first use (needs torch).

    Cached by the weights' digest, variant, precision and `EXPORTER_VERSION` (`ezvtb.export.exporter`);
    every file is written atomically, so an interrupted export is redone, never half-used.
    """
    from ezvtb.weights.tha3 import tha3_weights, weights_digest

    try:
        weights = tha3_weights(variant, precision, weights_dir)
    except FileNotFoundError:
        if precision != "fp16":
            raise
        # No official *_half files: half = a cast of the float weights (grid math stays fp32).
        weights = tha3_weights(variant, "fp32", weights_dir)
    loaded: list[Any] = []

    def poser() -> Any:  # loaded once, on the first stage that must be exported
        if not loaded:
            import torch

            from ezvtb.models.tha3.poser import ThaPoser

            loaded.append(ThaPoser(variant, weights, torch.float16 if precision == "fp16" else torch.float32))
        return loaded[0]

    digest = weights_digest(weights.values())
    recipes = {s: tha3_recipe(s, variant, precision, digest, poser) for s in STAGES}
    todo = [s for s in STAGES if not is_complete(graph_path(recipes[s], out_dir))]
    if todo:
        from ezvtb.extras import require

        require("export", f"exporting the THA3 {variant} {precision} graphs (not cached in "
                          f"{graph_path(recipes[todo[0]], out_dir).parent})")
        from tqdm import tqdm

        with progress_logging():
            for s in tqdm(todo, desc=f"exporting THA3 {variant} {precision}", unit="graph", disable=not progress,
                          leave=False):
                export_graph(recipes[s], out_dir=out_dir, progress=False)
    return {s: graph_path(recipes[s], out_dir) for s in STAGES}


__all__ = ["EXPORTER_VERSION", "ExportError", "Recipe", "export_graph", "tha3_graphs", "tha3_recipe"]
