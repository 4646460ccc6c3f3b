"""The CompVis latent-diffusion originals as an independent reference (tests only).

stable-diffusion-sdkit ships ``ldm.modules.diffusionmodules.util``; it is loaded by file path, so
the ``ldm`` package's own imports (optional dependencies) never run.
"""
from __future__ import annotations

import importlib.util
import pathlib

import pytest


def ldm_util():
    """The CompVis ``ldm.modules.diffusionmodules.util`` module, or skip the test without it."""
    spec = importlib.util.find_spec("ldm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("stable-diffusion-sdkit (CompVis ldm) is not installed")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "modules" / "diffusionmodules" / "util.py"
    mod_spec = importlib.util.spec_from_file_location("_compvis_ldm_util", path)
    mod = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(mod)
    except ImportError as e:  # pragma: no cover - depends on the install
        pytest.skip(f"CompVis ldm util does not import here: {e}")
    return mod
