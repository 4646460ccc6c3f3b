"""Precision follows the backend: `model_half`, `interpolation_half`, `sr_half` default to
None = auto, fp16 on backends that run fp16 natively, fp32 on the CPU; an explicit value wins.

The resolution is tested for every backend name (no GPU here); the CPU path end to end."""
import argparse
import logging

import pytest

from ezvtb.engines.policy import BACKENDS, HALF_BACKENDS, concrete_backend, resolve_precision
from ezvtb.factory import get_core


@pytest.mark.parametrize("backend, auto", [("cpu", "fp32"), ("cuda", "fp16"), ("tensorrt", "fp16"),
                                           ("trt", "fp16"), ("directml", "fp16")])
def test_resolution_per_backend(backend, auto):
    assert resolve_precision(None, backend) == auto
    assert resolve_precision(True, backend) == "fp16"  # an explicit value is honoured everywhere
    assert resolve_precision(False, backend) == "fp32"


def test_every_concrete_backend_is_covered():
    concrete = [b for b in BACKENDS if b != "auto"]
    assert set(HALF_BACKENDS) | {"cpu"} == set(concrete)
    with pytest.raises(ValueError, match="backend: expected a concrete backend"):
        resolve_precision(None, "auto")
    with pytest.raises(ValueError, match="backend"):
        resolve_precision(None, "vulkan")


def test_auto_resolves_to_what_this_onnxruntime_offers():
    import onnxruntime as ort

    providers = ort.get_available_providers()
    want = ("cuda" if "CUDAExecutionProvider" in providers else
            "directml" if "DmlExecutionProvider" in providers else "cpu")
    assert concrete_backend("auto") == want
    for b in ("cpu", "cuda", "trt"):
        assert concrete_backend(b) == b


def test_flow_scale_resolution():
    from ezvtb.stages.rife import CPU_FLOW_SCALE, GPU_FLOW_SCALE, resolve_flow_scale

    assert resolve_flow_scale(None, "cpu") == CPU_FLOW_SCALE
    for b in HALF_BACKENDS:
        assert resolve_flow_scale(None, b) == GPU_FLOW_SCALE == 1.0
    assert resolve_flow_scale(0.25, "cuda") == 0.25
    for bad in (0.3, "half", True, 2):
        with pytest.raises(ValueError, match="interpolation_flow_scale: expected one of"):
            resolve_flow_scale(bad, "cpu")


@pytest.mark.parametrize("name", ["model_half", "interpolation_half", "sr_half"])
def test_bad_half_values_name_the_option(name):
    with pytest.raises(ValueError, match=f"{name}: expected a bool"):
        get_core(use_tensorrt=False, backend="cpu", use_cacher=False, use_interpolation=name == "interpolation_half",
                 use_sr=name == "sr_half", **{name: "yes"})


def test_bad_flow_scale_is_refused_before_any_export():
    with pytest.raises(ValueError, match="interpolation_flow_scale"):
        get_core(use_tensorrt=False, backend="cpu", use_cacher=False, interpolation_flow_scale=0.3)


def test_cli_flags_default_to_auto():
    from ezvtb.cli.core_options import add_core_arguments
    from ezvtb.options import CoreOptions

    def core_kwargs(args):
        return CoreOptions.from_args(args).as_dict()

    p = argparse.ArgumentParser()
    add_core_arguments(p)
    kw = core_kwargs(p.parse_args(["--interpolation", "2", "--sr", "x4"]))
    assert kw["model_half"] is None and kw["interpolation_half"] is None and kw["sr_half"] is None
    assert kw["interpolation_flow_scale"] is None
    kw = core_kwargs(p.parse_args(["--no-half", "--interpolation", "2", "--interpolation-half", "--sr", "x2",
                                   "--no-sr-half", "--interpolation-flow-scale", "0.25"]))
    assert kw["model_half"] is False and kw["interpolation_half"] is True and kw["sr_half"] is False
    assert kw["interpolation_flow_scale"] == 0.25


def test_seed_defaults_on_cpu_run_fp32_without_warning(caplog):
    """The seed's call with every *_half left at its default: fp32 graphs on the CPU, no precision warning;
    stats() says the precision."""
    with caplog.at_level(logging.WARNING, logger="ezvtb"):
        core = get_core(use_tensorrt=False, use_interpolation=False, use_cacher=False, backend="cpu",
                        model_cache=False, threads=2)
    try:
        assert core.stats()["tha"]["precision"] == "fp32"
        assert "/fp32/" in core.variant
        assert not [r for r in caplog.records if "half" in r.getMessage()]
    finally:
        core.close()


def test_explicit_half_on_cpu_is_honoured_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="ezvtb"):
        core = get_core(use_tensorrt=False, model_half=True, use_interpolation=False, use_cacher=False,
                        backend="cpu", model_cache=False, threads=2)
    try:
        assert core.stats()["tha"]["precision"] == "fp16" and "/fp16/" in core.variant
        warned = [r.getMessage() for r in caplog.records if "half" in r.getMessage()]
        assert len(warned) == 1, warned
        assert "model_half=True on the CPU backend" in warned[0] and "758 vs 513 ms" in warned[0]
    finally:
        core.close()
