"""`ezvtb bench`: trace loading, dropped-tick arithmetic, option mapping; end to end with the real
core (and the upstream tha3 reference poser) in the slow tests."""
import argparse
import json

import numpy as np
import pytest

from ezvtb.cli import bench
from ezvtb.cli.core_options import add_core_arguments
from ezvtb.options import CoreOptions


def parse(*argv):
    p = argparse.ArgumentParser()
    add_core_arguments(p)
    return p.parse_args(list(argv))


def core_kwargs(args):
    return CoreOptions.from_args(args).as_dict()


def test_core_flags_map_to_get_core_keywords(tmp_path):
    kw = core_kwargs(parse())
    assert kw["use_interpolation"] is False and kw["use_cacher"] is True and kw["use_sr"] is False
    assert kw["model_half"] is None and kw["model_seperable"] is True and kw["use_tensorrt"] is True  # as get_core
    rife = tmp_path / "f.pkl"
    rife.write_bytes(b"")
    kw = core_kwargs(parse("--backend", "trt", "--half", "--model", "standard", "--interpolation", "3",
                           "--rife-model", str(rife), "--cache", "--cache-quality", "70", "--sr", "x2", "--sr-noise",
                           "2", "--no-model-cache", "--no-eyebrow", "--weights-dir", "w"))
    assert kw["use_tensorrt"] and kw["backend"] == "trt" and kw["model_half"] and not kw["model_seperable"]
    assert kw["interpolation_scale"] == 3 and kw["rife_model"] == str(rife) and kw["use_interpolation"]
    assert kw["use_cacher"] and kw["cacher_quality"] == 70 and kw["use_sr"] and kw["sr_x4"] is False
    assert kw["sr_noise"] == 2 and kw["model_cache"] is False and kw["model_use_eyebrow"] is False
    assert kw["weights_dir"] == "w"
    kw = core_kwargs(parse("--cache-db", "/tmp/db"))
    assert kw["use_cacher"] and kw["cacher_on_database"] and kw["cacher_db_path"] == "/tmp/db"
    kw = core_kwargs(parse("--no-cache", "--no-tensorrt", "--sr-region", "0,96", "--sr", "x4", "--sr-region-size",
                           "320", "--sr-alpha", "bicubic", "--no-model-vram-cache", "--pipelined"))
    assert kw["use_cacher"] is False and kw["use_tensorrt"] is False and kw["sr_region"] == (0, 96)
    assert kw["sr_region_size"] == 320 and kw["sr_alpha"] == "bicubic" and kw["model_vram_cache"] is False
    assert kw["pipelined"] is True
    with pytest.raises(ValueError, match="--interpolation"):
        core_kwargs(parse("--interpolation", "5"))
    with pytest.raises(ValueError, match=r"^--cache-quality: expected an int in 1\.\.100"):
        core_kwargs(parse("--cache-quality", "0"))


def test_load_trace(tmp_path):
    t = bench.load_trace(None, None, 30.0)
    assert t.shape == (300, 45) and t.dtype == np.float32
    assert bench.load_trace(None, 7, 30.0).shape == (7, 45)
    poses = np.random.default_rng(0).uniform(0, 1, (4, 45)).astype(np.float32)
    np.save(tmp_path / "p.npy", poses)
    (tmp_path / "p.json").write_text(json.dumps(poses.tolist()))
    np.testing.assert_allclose(bench.load_trace(str(tmp_path / "p.json"), None, 30), poses, atol=1e-6)
    t = bench.load_trace(str(tmp_path / "p.npy"), 10, 30)
    np.testing.assert_array_equal(t[4:8], poses)  # repeated to reach --frames
    with pytest.raises(ValueError, match="--trace"):
        bench.load_trace(str(tmp_path / "missing.npy"), None, 30)
    with pytest.raises(ValueError, match="--frames"):
        bench.load_trace(None, 0, 30)
    with pytest.raises(ValueError, match="--fps"):
        bench.load_trace(None, 3, 0)


def test_dropped_ticks_and_percentiles():
    # at 30 fps (33.3 ms): 10 ms -> 0, 40 ms -> 1, 100 ms -> 3 (exactly 3 periods), 70 ms -> 2
    assert bench.dropped_ticks([10, 40, 100, 70], 30) == 6
    assert bench.dropped_ticks([], 30) == 0
    p = bench.percentiles(np.arange(1, 101))
    assert p["count"] == 100 and p["p50_ms"] == pytest.approx(50.5) and p["p99_ms"] == pytest.approx(99.01)


def test_format_table_has_one_row_per_stage_and_reference_ratio():
    s = bench.percentiles([1.0, 2.0, 3.0])
    fig = {"stages": {"tha.editor": s, "tha": s, "inference": s}, "output_fps": 10.0, "frames_out": 3, "poses": 3,
           "fps_target": 30.0, "frames_dropped": 0, "calls_over_budget": 0, "cache_hit_rate": None,
           "tha_morpher_cache_hit_rate": 0.5, "reference": {"count": 3, **bench.percentiles([4.0, 4.0, 4.0])},
           "ratio_reference_over_ours_p50": 2.0}
    text = bench.format_table(fig)
    print(text)
    lines = text.splitlines()
    assert lines[0].split("|")[1].strip() == "stage" and "ref/ours" in lines[0]
    assert any(line.startswith("| inference") and "2.00x" in line for line in lines)
    assert "tha3 reference poser" in text and "morpher cache hit rate 50.0%" in text


# --- the real core -------------------------------------------------------------------------------
def _have_tha3_export():
    try:
        from ezvtb.export import tha3_graphs  # noqa: F401
    except ImportError:
        return False
    return True


needs_core = pytest.mark.skipif(not _have_tha3_export(),
                                reason="the THA3 export (ezvtb.export.tha3_graphs) is not in the tree yet")


@pytest.mark.slow
@needs_core
def test_bench_real_core_with_reference_and_json(tmp_path, capsys):
    from ezvtb.cli import main

    out = tmp_path / "b.json"
    rc = main(["bench", "--frames", "3", "--warmup", "1", "--backend", "cpu", "--threads", "2", "--reference",
               "--cache", "--json", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    print(text)
    fig = json.loads(out.read_text())
    assert fig["poses"] == 3 and fig["frames_out"] == 3
    for stage in ("tha.rotator", "tha.editor", "tha", "inference"):
        s = fig["stages"][stage]
        assert s["count"] >= 1 and 0 < s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"]
    assert fig["stages"]["inference"]["count"] == 3
    assert fig["reference"]["count"] == 3 and fig["ratio_reference_over_ours_p50"] > 0
    assert fig["tha_runs"]["decomposer"] == 0 and fig["tha_runs"]["editor"] == 3
    # the warm-up ran on another (mirrored) character: its frames are never hits of the measured run
    assert fig["cache_hit_rate"] == 0.0
    assert "ref/ours" in text and "| inference" in text and "output fps" in text
    assert "backend=cpu," in text  # the backend that ran, not the flag's "auto"


def test_json_figures_are_plain_json():
    import pathlib

    out = bench._jsonable({"a": float("nan"), "b": np.float32(1.5), "c": [np.int64(3), pathlib.Path("x")], 4: None})
    assert json.loads(json.dumps(out, allow_nan=False)) == {"a": None, "b": 1.5, "c": [3, "x"], "4": None}
