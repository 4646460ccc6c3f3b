"""SVD's temporal VAE decoder (diffusers' `AutoencoderKLTemporalDecoder`, loaded from sgm `VideoDecoder` keys)
exported through `GraphRunner` by the novel_view decoder stage: ORT vs torch on a tiny random config, for the
whole clip at once and `decoding_t` chunks (one graph per chunk length, frames mixed only within a chunk)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from sgm_video_fixtures import ldm_vae_parts, randomise_, tiny_checkpoint  # noqa: E402

TOL = 1e-4


def _sgm_video_decoder_state_dict(seed: int) -> dict:
    """A random diffusers temporal decoder written back in sgm `VideoDecoder` names (inverse of our loader's
    table; the names themselves are checked against upstream sgm in test_novel_view_models)."""
    from diffusers import AutoencoderKLTemporalDecoder

    from ezvtb.models.sgm_video.vae import _ATTN, _VIDEO_RES, VAEHyper, _decoder_pairs

    vae = AutoencoderKLTemporalDecoder(block_out_channels=(32, 64, 128, 128), layers_per_block=2,
                                       down_block_types=("DownEncoderBlock2D",) * 4, latent_channels=4)
    randomise_(vae.decoder, seed)
    hp = VAEHyper(32, (1, 2, 4, 4), 2, 4, True)
    pairs = _decoder_pairs(hp)
    out = {}
    for key, v in vae.decoder.state_dict().items():
        for sp, dp in pairs:
            if not key.startswith(dp):
                continue
            rest = key[len(dp):]
            if ".attentions." in dp:
                table = _ATTN
            elif "conv_in" in dp or "conv_out" in dp or "norm_out" in dp or "upsamplers" in dp:
                table = (("", ""),)
            else:
                table = _VIDEO_RES
            for old, new in table:
                if rest.startswith(new):
                    if table is _ATTN and v.ndim == 2:
                        v = v[:, :, None, None]  # sgm stores attention projections as 1x1 convs
                    out[sp + old + rest[len(new):]] = v.clone()
                    break
            break
        else:
            raise AssertionError(f"no sgm name for {key}")
    assert len(out) == len(vae.decoder.state_dict())
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from ezvtb.models.sgm_video.checkpoint import split_state_dict
    from ezvtb.novel_view.model import VideoModel

    mp = pytest.MonkeyPatch()
    mp.setenv("EZVTB_HOME", str(tmp_path_factory.mktemp("ezvtb_home")))
    parts = split_state_dict(tiny_checkpoint("svd", seed=7), "svd")
    enc, quant, _ = ldm_vae_parts(seed=8, num_res_blocks=2)  # the encoder's sizes follow the decoder's
    parts.encoder, parts.quant_conv = enc.state_dict(), quant.state_dict()
    parts.decoder = _sgm_video_decoder_state_dict(seed=9)
    kw = dict(num_frames=4, num_steps=2, num_head_channels=16, clip_head_width=32)
    eager = VideoModel(parts, "svd", backend="torch", **kw)
    ort = VideoModel(parts, "svd", backend="cpu", **kw)
    yield eager, ort
    mp.undo()


def test_temporal_decoder_is_loaded(models):
    eager, _ = models
    assert eager.temporal_decoder and type(eager.first_stage_model.vae).__name__ == "AutoencoderKLTemporalDecoder"


@pytest.mark.slow  # three ONNX exports of the decoder (~100 s on 2 loaded cores)
@pytest.mark.parametrize("decoding_t", [None, 3])
def test_temporal_decoder_ort_matches_torch(models, decoding_t):
    eager, ort = models
    z = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(11)) * 0.18215
    a = eager.decode(z, decoding_t)
    b = ort.decode(z, decoding_t)
    err = (a - b).abs().max().item()
    print(f"temporal decoder (decoding_t={decoding_t}): ORT vs torch max |diff| {err:.2e} "
          f"(|out| max {a.abs().max():.2f}, shape {tuple(a.shape)})")
    assert a.shape == (4, 3, 64, 64)
    assert a.abs().max() > 0.05 and err <= TOL
    if decoding_t is not None:  # the temporal layers mix frames: chunking changes the result, both sides alike
        whole = eager.decode(z, None)
        assert (whole - a).abs().max() > 1e-4
