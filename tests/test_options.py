"""`ezvtb.options.CoreOptions`: the one description of a core that get_core, the command line, the IPC server,
the cluster and the job files share (defaults, validation, derived facts, flags)."""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json

import pytest

from ezvtb.cli.core_options import add_core_arguments
from ezvtb.factory import get_core
from ezvtb.options import CLI_DIFFERENCES, FLAGS, CoreOptions, command_line_defaults


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_core_arguments(p)
    return p.parse_args(list(argv))


def test_get_core_keeps_the_seed_signature_and_takes_its_defaults_from_core_options():
    params = list(inspect.signature(get_core).parameters.values())
    fields = dataclasses.fields(CoreOptions)
    assert [p.name for p in params] == [f.name for f in fields]
    for p, f in zip(params, fields):
        assert p.default == f.default, p.name
        assert (p.kind is inspect.Parameter.KEYWORD_ONLY) == f.metadata["keyword_only"], p.name
    seed = ["device_id", "use_tensorrt", "model_seperable", "model_half", "model_cache", "model_vram_cache",
            "model_cache_size", "model_use_eyebrow", "use_interpolation", "interpolation_scale", "interpolation_half",
            "use_cacher", "cacher_quality", "cacher_ram_size", "use_sr", "sr_x4", "sr_half", "sr_noise"]
    assert [p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD] == seed
    for info in CoreOptions.describe():  # every option is documented, in get_core's help too
        assert info.help and info.name in get_core.__doc__ and info.flag, info
    from ezvtb.models.sr.spec import ALPHA_MODE

    assert CoreOptions().sr_alpha == ALPHA_MODE


def test_validated_once_normalised_frozen_and_hashable():
    o = CoreOptions(use_interpolation=1, model_cache_size=2, sr_region=[0, 96], use_sr=True)
    assert o.use_interpolation is True and o.model_cache_size == 2.0 and o.sr_region == (0, 96)
    assert o == CoreOptions(model_cache_size=2.0, sr_region=(0, 96), use_sr=True) and hash(o) == hash(o.replace())
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.backend = "cpu"  # type: ignore[misc]
    bad = [({"use_interpolation": "yes"}, "use_interpolation: expected a bool, got 'yes'"),
           ({"interpolation_scale": 5}, "interpolation_scale: expected one of"),
           ({"backend": "metal"}, "backend: expected one of"),
           ({"threads": -1}, "threads: expected an int >= 0"),
           ({"device_id": 1.5}, "device_id: expected an int >= 0"),
           ({"cacher_quality": 0}, "cacher_quality: expected an int in 1..100"),
           ({"use_cacher": False, "cacher_on_database": True}, "cacher_on_database / cacher_db_path: given with"),
           ({"use_sr": True, "sr_region_size": 100}, "sr_region_size: expected a multiple of 32"),
           ({"pose_quantization": 2}, "pose_quantization: expected None or a step"),
           ({"model_cache_size": float("nan")}, "model_cache_size: expected a size in GB")]
    for kw, message in bad:
        with pytest.raises(ValueError) as e:
            CoreOptions(**kw)
        assert str(e.value).startswith(message), (kw, str(e.value))
    # options of a stage that is off are not checked (as get_core always did)
    assert CoreOptions(use_interpolation=False, interpolation_scale=7).frames_per_pose == 1


def test_derived_facts():
    assert CoreOptions().frames_per_pose == 2 and CoreOptions(interpolation_scale=4).frames_per_pose == 4
    assert CoreOptions(use_interpolation=False).frames_per_pose == 1
    assert CoreOptions().output_shape == (512, 512, 4)
    assert CoreOptions(use_sr=True).output_shape == (1024, 1024, 4)
    assert CoreOptions(use_sr=True, sr_x4=False).output_shape == (1024, 1024, 4)
    assert CoreOptions(use_sr=True, sr_region_size=128).output_shape == (512, 512, 4)
    assert CoreOptions(use_sr=True, sr_region_size=320).output_shape == (1280, 1280, 4)
    assert CoreOptions(backend="cpu").backend_chain() == [("cpu", "requested")]
    assert CoreOptions(use_tensorrt=False).backend_chain() == [("auto", "use_tensorrt=False")]
    assert CoreOptions().wants_tensorrt and not CoreOptions(backend="cuda").wants_tensorrt


def test_from_mapping_for_ipc_and_jobs():
    doc = json.loads('{"use_interpolation": false, "sr_region": [0, 128], "use_sr": true, "backend": "cpu"}')
    o = CoreOptions.from_mapping(doc)
    assert o.sr_region == (0, 128) and o.backend == "cpu" and o.frames_per_pose == 1
    assert CoreOptions.from_mapping(None) == CoreOptions()
    assert CoreOptions.from_mapping({}, base=command_line_defaults()) == command_line_defaults()
    with pytest.raises(ValueError, match=r"^job 3: options: unknown get_core option\(s\) \['use_rtx'\] \(known: "):
        CoreOptions.from_mapping({"use_rtx": True}, where="job 3: options")
    with pytest.raises(ValueError, match="options: expected an object of get_core keywords"):
        CoreOptions.from_mapping(["backend"])  # type: ignore[arg-type]


def test_command_line_defaults_are_get_cores_except_the_stated_differences():
    cli = CoreOptions.from_args(parse())
    assert cli == command_line_defaults()
    lib = CoreOptions()
    differ = {f.name for f in dataclasses.fields(CoreOptions) if getattr(cli, f.name) != getattr(lib, f.name)}
    assert differ == set(CLI_DIFFERENCES) == {"use_interpolation"}
    assert cli.use_cacher is True and cli.use_tensorrt is True  # the command line used to turn these off
    p = argparse.ArgumentParser()
    add_core_arguments(p)
    text = " ".join(p.format_help().split())
    for name, why in CLI_DIFFERENCES.items():  # each difference is stated in the flag's help
        assert " ".join(why.split()) in text, name
    flags = [a for f in FLAGS for a in (f.name,)]
    assert len(flags) == len(set(flags))
    covered = [o for f in FLAGS for o in f.options]
    assert sorted(covered) == sorted(f.name for f in dataclasses.fields(CoreOptions))  # one flag per option


def test_cli_backend_auto_picks_the_same_backend_as_get_core(monkeypatch):
    """`ezvtb run --backend auto` and a bare `get_core()` build the same options, so the same backend chain:
    with TensorRT usable (simulated: no GPU here) both try native TensorRT first."""
    import ezvtb.engines.trt as trt
    from ezvtb import factory
    from ezvtb.cli import main

    built: list[CoreOptions] = []

    class Stop(Exception):
        pass

    def capture(opts):
        built.append(opts)
        raise Stop

    monkeypatch.setattr(factory, "build_core", capture)
    with pytest.raises(Stop):
        get_core()
    with pytest.raises(Stop):
        main(["run", "--input", "trace://", "--output", "null:", "--backend", "auto", "--interpolation", "2"])
    lib, cli = built
    assert cli == lib  # --interpolation 2 asks for what get_core() does by default
    monkeypatch.setattr(trt, "available", lambda: (True, ""))
    assert cli.backend_chain()[0][0] == lib.backend_chain()[0][0] == "trt"
    monkeypatch.setattr(trt, "available", lambda: (False, "no tensorrt here"))
    assert cli.backend_chain() == lib.backend_chain()


def test_cli_errors_name_the_flag():
    with pytest.raises(ValueError, match=r"^--interpolation: expected 1 \(off\), 2, 3 or 4, got 5"):
        CoreOptions.from_args(parse("--interpolation", "5"))
    with pytest.raises(ValueError, match=r"^--sr-region-size: expected a multiple of 32"):
        CoreOptions.from_args(parse("--sr", "x4", "--sr-region-size", "100"))
    with pytest.raises(SystemExit):
        parse("--sr-region", "top")


def test_ipc_and_cluster_derive_output_from_the_options():
    from ezvtb.ipc.echo import echo_frames
    from ezvtb.ipc.engine import expected_output

    assert expected_output("core", {"use_sr": True, "sr_region_size": 192, "use_interpolation": False}) == (
        (768, 768, 4), 1)
    assert expected_output("core", {"interpolation_scale": 4}) == ((512, 512, 4), 4)
    assert expected_output("echo", {"interpolation_scale": 3}) == ((512, 512, 4), 3)  # no RIFE weights needed
    assert echo_frames({"use_interpolation": False}) == 1
    with pytest.raises(ValueError, match=r"unknown get_core option\(s\) \['nope'\]"):
        echo_frames({"nope": 1})


APPS = ("cli", "studio")  # the entry points: the command line and the web app


def test_no_library_module_imports_the_command_line():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "ezvtb"
    offenders = []
    for path in root.rglob("*.py"):
        if path.relative_to(root).parts[0] in APPS or path.name == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(root)}: {n}" for n in names if n == "ezvtb.cli" or
                          n.startswith("ezvtb.cli.")]
    assert offenders == []
