"""The realtime core stays light: importing it loads neither torch nor the generative extras."""
from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "diffusers", "transformers", "ray", "onnx", "open_clip", "einops", "safetensors", "fastapi",
         "uvicorn", "starlette")
LIGHT = ("ezvtb.core", "ezvtb.factory", "ezvtb.stages", "ezvtb.cache", "ezvtb.ipc", "ezvtb.live", "ezvtb.engines",
         "ezvtb.engines.policy", "ezvtb.engines.runner",
         "ezvtb.export", "ezvtb.diffusion")


def test_core_and_factory_import_no_heavy_package():
    code = (
        "import importlib, json, sys\n"
        f"for m in {list(LIGHT)!r}: importlib.import_module(m)\n"
        f"print(json.dumps(sorted(h for h in {list(HEAVY)!r} if h in sys.modules)))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    loaded = json.loads(r.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing the realtime core loaded {loaded}"
