"""SadTalker's original Audio2Coeff code from the installed `sadtalker-z` package (Apache-2.0), for fidelity tests.

Submodules are imported by file path under a bare `sadtalker` package object, so the package's own __init__
(which pulls the face renderer and its many dependencies) never runs. `yacs` (only its YAML loader is used) is
replaced by a minimal reader when it is not installed. Tests skip when `sadtalker-z` is absent.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest

UPSTREAM_POSE_YAML = """\
DATASET:
  NUM_CLASSES: 46
  FRAME_LEN: 32
  COEFF_LEN: 73
MODEL:
  AUDIOENCODER:
    LEAKY_RELU: True
    NORM: 'IN'
  DISCRIMINATOR:
    LEAKY_RELU: False
    INPUT_CHANNELS: 6
  CVAE:
    AUDIO_EMB_IN_SIZE: 512
    AUDIO_EMB_OUT_SIZE: 6
    SEQ_LEN: 32
    LATENT_SIZE: 64
    ENCODER_LAYER_SIZES: [192, 128]
    DECODER_LAYER_SIZES: [128, 192]
"""
UPSTREAM_EXP_YAML = """\
DATASET:
  EXP_DIM: 64
  FRAME_LEN: 32
MODEL:
  FRAMES: 10
"""


def _package_dir() -> str:
    spec = importlib.util.find_spec("sadtalker")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("sadtalker-z (SadTalker's original code) is not installed")
    return list(spec.submodule_search_locations)[0]


def _yacs_shim() -> None:
    try:
        import yacs.config  # noqa: F401
        return
    except ImportError:
        pass
    import yaml

    class CfgNode(dict):
        def __getattr__(self, k):
            try:
                return self[k]
            except KeyError:
                raise AttributeError(k) from None

        def freeze(self):
            return self

        @classmethod
        def load_cfg(cls, f):
            def conv(v):
                return cls({k: conv(x) for k, x in v.items()}) if isinstance(v, dict) else v
            return conv(yaml.safe_load(f))

    yacs = types.ModuleType("yacs")
    config = types.ModuleType("yacs.config")
    config.CfgNode = CfgNode
    yacs.config = config
    sys.modules.setdefault("yacs", yacs)
    sys.modules.setdefault("yacs.config", config)


def original(module: str):
    """`sadtalker.<module>` imported without running sadtalker/__init__.py."""
    pkg = sys.modules.get("sadtalker")
    if pkg is None or getattr(pkg, "__file__", None):
        d = _package_dir()
        for k in [k for k in sys.modules if k == "sadtalker" or k.startswith("sadtalker.")]:
            del sys.modules[k]
        pkg = types.ModuleType("sadtalker")
        pkg.__path__ = [d]
        sys.modules["sadtalker"] = pkg
    if module == "test_audio2coeff":
        _yacs_shim()
    return importlib.import_module(f"sadtalker.{module}")
