"""Exporting models to ONNX, with a cache keyed by weights, variant, precision and exporter.

Importable without torch: torch is imported only when a graph actually has to be exported.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from ezvtb import paths
from ezvtb.atomic import atomic_write
from ezvtb.models.tha3.spec import STAGES, onnx_file_name

log = logging.getLogger("ezvtb.export")
EXPORTER_VERSION = "tha3-6"  # tha3-6: exact CPU rewrites (ezvtb.export.tha3.REWRITES), LUT input conversion


def tha3_graphs(variant: str = "separable", precision: str = "fp32", weights_dir: str | os.PathLike | None = None,
                out_dir: str | os.PathLike | None = None, progress: bool = True) -> dict[str, Path]:
    """Paths of the five THA3 stage graphs, exporting them on first use (needs torch).

    The cache folder is keyed by the weights' digest, variant, precision and EXPORTER_VERSION;
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
    key = hashlib.blake2b(f"{weights_digest(weights.values())}|{variant}|{precision}|{EXPORTER_VERSION}".encode(),
                          digest_size=8).hexdigest()
    folder = Path(out_dir) if out_dir is not None else paths.subdir("onnx", "tha3", key)
    files = {s: folder / onnx_file_name(s, variant, precision) for s in STAGES}
    todo = [s for s in STAGES if not files[s].is_file()]
    if todo:
        from ezvtb.extras import require

        require("export", f"exporting the THA3 {variant} {precision} graphs (not cached in {folder})")
        import torch
        from tqdm import tqdm

        from ezvtb.export.quiet import progress_logging, quiet_export
        from ezvtb.export.tha3 import export_stage
        from ezvtb.models.tha3.poser import ThaPoser

        poser = ThaPoser(variant, weights, torch.float16 if precision == "fp16" else torch.float32)
        with progress_logging():
            for s in tqdm(todo, desc=f"exporting THA3 {variant} {precision}", unit="graph", disable=not progress,
                          leave=False):
                with quiet_export(f"THA3 {variant} {precision} {s}") as caught:
                    data = export_stage(poser, s, precision)
                with atomic_write(files[s]) as f:
                    f.write(data)
                log.info("exported THA3 %s %s %s (%.1f MB, %s) -> %s", variant, precision, s, len(data) / 1e6,
                         caught, files[s])
    return files
