"""Missing optional parts are named as the extra to install, before any expensive work."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from ezvtb.extras import EXTRAS, MissingExtraError, explain, missing, require

ROOT = Path(__file__).resolve().parents[1]
# distributions whose import name differs from the distribution name
MODULE_OF = {"python-osc": "pythonosc", "pillow": "PIL", "pyyaml": "yaml", "PyTurboJPEG": "turbojpeg"}
# extras that bring an ONNX Runtime build (named by ezvtb.engines.install.backend_install_hint) or the tests
NOT_MODULE_EXTRAS = {"cpu", "cuda", "tensorrt", "cuda12", "tensorrt-cuda12", "directml", "dev"}


def test_extras_table_restates_pyproject():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras) == set(EXTRAS) | NOT_MODULE_EXTRAS
    for name, modules in EXTRAS.items():
        dists = [re.match(r"[A-Za-z0-9_.-]+", r).group(0) for r in extras[name]]
        assert sorted(modules) == sorted(MODULE_OF.get(d, d.replace("-", "_")) for d in dists), name


def test_require_and_explain():
    assert missing("audio") == []  # the dev install has every extra
    require("audio", "ezvtb speak")
    with pytest.raises(ValueError, match="extra: expected one of"):
        missing("sound")
    err = ModuleNotFoundError("No module named 'scipy'", name="scipy.io")
    assert explain(err) == ("No module named 'scipy': `scipy` comes with the `audio` extra: "
                            "pip install 'ezvtb[audio]'")
    assert "`export` or `diffusion` extra" in explain(ModuleNotFoundError("x", name="torch"))
    assert explain(MissingExtraError("ezvtb speak needs the `audio` extra")) == "ezvtb speak needs the `audio` extra"
    unrelated = ModuleNotFoundError("No module named 'zzz'", name="zzz")
    assert explain(unrelated) == "ModuleNotFoundError: No module named 'zzz'"


def _cuda_provider() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.skipif(_cuda_provider(), reason="this onnxruntime build has the CUDA provider")
def test_a_backend_without_its_provider_fails_before_any_download_or_export(tmp_path, monkeypatch, caplog):
    from ezvtb import get_core
    from ezvtb.cli import main
    from ezvtb.engines.errors import BackendUnavailableError
    from ezvtb.engines.install import installed_ort_packages

    home = tmp_path / "home"
    monkeypatch.setenv("EZVTB_HOME", str(home))
    assert main(["demo", "--backend", "cuda", "--out", str(tmp_path / "d.mp4")]) == 2
    text = caplog.text
    assert f"pip uninstall -y {' '.join(installed_ort_packages())}` first" in text
    assert "pip install 'ezvtb[cuda]'" in text and "pip install 'ezvtb[cuda12]'" in text
    with pytest.raises(BackendUnavailableError, match=r"ezvtb\[tensorrt\]"):
        get_core(backend="tensorrt", use_interpolation=False, use_cacher=False)
    assert not home.exists() or not any(home.rglob("*")), sorted(home.rglob("*"))  # nothing fetched or exported
