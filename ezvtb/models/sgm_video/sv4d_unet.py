"""SV4D's denoiser: sgm's `SpatialUNetModelWithTime` with camera (view) and motion attention, on diffusers blocks.

What the network computes (read from Stability-AI/generative-models @0ad7de9, `video_model.py` and
`spacetime_attention.py`; this is our own code):

* One call denoises a grid of ``T`` time frames x ``V`` views for ``B`` batch entries (CFG: B = 2); the latents are
  flattened in (b, t, v) order, N = B*T*V rows (SV4D: T 5, V 8; SV4D 2.0: T 12, V 4).
* Res blocks (`PostHocResBlockWithTime`) = a 2-D ResBlock, then a 3-D ResBlock (kernel 3x1x1) over all T*V rows of
  one batch entry in (t, v) order, mixed by an AlphaBlender whose image-only indicator upstream multiplies by 0,
  so alpha = sigmoid(mix_factor) always. diffusers' `SpatioTemporalResBlock` computes exactly that.
* Attention blocks (`PostHocSpatialTransformerWithTimeMixingAndMotion`): GroupNorm, linear proj_in, then per depth:
  spatial transformer (cross-attention to the CLIP embedding of the row's time frame), camera attention (a
  temporal transformer over the V views at each time frame and pixel, context: the CLIP embedding, plus a view
  embedding), motion attention (a temporal transformer over the T frames at each view and pixel, context: the
  `cond_view` latent resized bilinearly to the block's size, one 4-vector per pixel, plus a frame-index embedding),
  each mixed back with alpha = sigmoid(mix_factor); proj_out; residual. The temporal transformers are diffusers'
  `TemporalBasicTransformerBlock`, the spatial ones `BasicTransformerBlock`.
* SV4D 2.0 (``sv4d2``): the view embedding comes from the UNet's own time + ADM embedding of the views at the first
  time frame (`use_camera_emb`; the embedder's input width is the ADM width, 1280 = 4 x 320), the motion mix has
  its own `time_mixer_motion`, and `use_3d_attention` changes the camera-attention grouping (rows regrouped as
  (b, v, pixel) x T, then attention over V consecutive rows, exactly as upstream's reshapes do).
* `cond_motion` and `image_only_indicator` reach upstream's blocks but change nothing in the output; the exported
  graph therefore takes neither (the sampler applies upstream's "cond_view *= 0 when not cond_mv").

Checkpoint keys are upstream's (`model.diffusion_model.` stripped); `SV4DHyper.from_state_dict` reads every size
from the tensor shapes. Not in the shapes: the head width (64) and `use_3d_attention` (true exactly for the
SV4D 2.0 layout, i.e. with a camera embedding, unless given).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ezvtb.engines.base import GraphSpec, TensorSpec
from ezvtb.models.sgm_video.unet import UNetHyper, read_unet_levels

# diffusers SpatioTemporalResBlock sub-module -> sgm PostHocResBlockWithTime sub-module
_RES_TO_SGM = (
    ("spatial_res_block.norm1.", "in_layers.0."),
    ("spatial_res_block.conv1.", "in_layers.2."),
    ("spatial_res_block.time_emb_proj.", "emb_layers.1."),
    ("spatial_res_block.norm2.", "out_layers.0."),
    ("spatial_res_block.conv2.", "out_layers.3."),
    ("spatial_res_block.conv_shortcut.", "skip_connection."),
    ("temporal_res_block.norm1.", "time_mix_blocks.in_layers.0."),
    ("temporal_res_block.conv1.", "time_mix_blocks.in_layers.2."),
    ("temporal_res_block.time_emb_proj.", "time_mix_blocks.emb_layers.1."),
    ("temporal_res_block.norm2.", "time_mix_blocks.out_layers.0."),
    ("temporal_res_block.conv2.", "time_mix_blocks.out_layers.3."),
    ("time_mixer.", "time_mixer."),
)


def _sinusoid(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """sgm `timestep_embedding` (cos first, period 10000) = diffusers' with flip_sin_to_cos, shift 0."""
    from diffusers.models.embeddings import get_timestep_embedding

    return get_timestep_embedding(positions.reshape(-1), dim, flip_sin_to_cos=True, downscale_freq_shift=0)


@dataclass(frozen=True, kw_only=True)
class SV4DHyper(UNetHyper):
    """SpatialUNetModelWithTime hyperparameters: `UNetHyper`'s plus the middle block's depth, the motion
    attention's context width and the SV4D 2.0 switches; all but `num_head_channels` and `use_3d_attention`
    from shapes. The temporal kernel is always (3, 1, 1)."""

    video_kernel_size: tuple[int, int, int] = (3, 1, 1)
    transformer_depth_middle: int
    motion_context_dim: int
    camera_embedding: bool  # SV4D 2.0: view embedding from the UNet's time + ADM embedding
    separate_motion_mixer: bool  # SV4D 2.0: `time_mixer_motion`
    use_3d_attention: bool

    @classmethod
    def from_state_dict(cls, sd: dict, num_head_channels: int = 64,
                        use_3d_attention: bool | None = None) -> "SV4DHyper":
        """Derive the hyperparameters from an SV4D UNet state dict (keys without `model.diffusion_model.`)."""
        if not any(".motion_blocks." in k for k in sd):
            raise ValueError("checkpoint: no motion_blocks in this UNet (an SVD/SV3D VideoUNet, not SV4D)")
        levels = read_unet_levels(sd, "SV4D UNet", "time_mix_blocks")
        if tuple(levels["video_kernel_size"]) != (3, 1, 1):
            raise ValueError(f"checkpoint: temporal kernel {tuple(levels['video_kernel_size'])} is not (3, 1, 1) "
                             "(the only one SV4D uses)")
        mid_depth = 0
        while f"middle_block.1.transformer_blocks.{mid_depth}.attn1.to_q.weight" in sd:
            mid_depth += 1
        first_attn = next(k[: -len("proj_in.weight")] for k in sorted(sd) if k.endswith(".proj_in.weight"))
        cam_in = tuple(sd[first_attn + "time_mix_time_embed.0.weight"].shape)[1]
        ch0 = tuple(sd[first_attn + "proj_in.weight"].shape)[0]
        camera = cam_in != ch0
        adm, mc = levels["adm_in_channels"], levels["model_channels"]
        if camera and cam_in != adm:
            raise ValueError(f"checkpoint: camera embedding width {cam_in} differs from the ADM width {adm}")
        if camera and adm != 4 * mc:
            raise ValueError(f"checkpoint: camera embedding reads the UNet embedding ({4 * mc} wide), but its "
                             f"input width is {adm}")
        return cls(**levels, transformer_depth_middle=max(mid_depth, 1),
                   context_dim=tuple(sd[first_attn + "transformer_blocks.0.attn2.to_k.weight"].shape)[1],
                   motion_context_dim=tuple(sd[first_attn + "motion_blocks.0.attn2.to_k.weight"].shape)[1],
                   camera_embedding=camera, separate_motion_mixer=(first_attn + "time_mixer_motion.mix_factor") in sd,
                   use_3d_attention=camera if use_3d_attention is None else bool(use_3d_attention),
                   num_head_channels=num_head_channels)


def _mlp(cin: int, hidden: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, hidden), nn.SiLU(), nn.Linear(hidden, cout))


class _Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class _Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _res_block(cin: int, cout: int, temb: int) -> nn.Module:
    from diffusers.models.resnet import SpatioTemporalResBlock

    # sgm's ResBlocks normalise with GroupNorm(32, eps 1e-5); diffusers' default is 1e-6
    return SpatioTemporalResBlock(cin, cout, temb_channels=temb, eps=1e-5, merge_strategy="learned_with_images")


class MotionSpatialTransformer(nn.Module):
    """sgm `PostHocSpatialTransformerWithTimeMixingAndMotion` (linear projections), upstream's sub-module names.

    forward(x (B*T*V, C, h, w), context (B, T, D), emb (B*T*V, E), cond_view (B*V, Dm, H', W'), b, t, v)
    """

    def __init__(self, ch: int, heads: int, head_dim: int, depth: int, hp: SV4DHyper) -> None:
        super().__init__()
        from diffusers.models.attention import BasicTransformerBlock, TemporalBasicTransformerBlock
        from diffusers.models.resnet import AlphaBlender

        inner = heads * head_dim
        self.use_3d_attention = hp.use_3d_attention
        self.camera_embedding = hp.camera_embedding
        self.norm = nn.GroupNorm(32, ch, eps=1e-6)
        self.proj_in = nn.Linear(ch, inner)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, head_dim, cross_attention_dim=hp.context_dim, activation_fn="geglu")
            for _ in range(depth))
        self.time_mix_blocks = nn.ModuleList(
            TemporalBasicTransformerBlock(inner, inner, heads, head_dim, cross_attention_dim=hp.context_dim)
            for _ in range(depth))
        self.motion_blocks = nn.ModuleList(
            TemporalBasicTransformerBlock(inner, inner, heads, head_dim, cross_attention_dim=hp.motion_context_dim)
            for _ in range(depth))
        self.proj_out = nn.Linear(inner, ch)
        self.time_mix_time_embed = _mlp(hp.adm_in_channels if hp.camera_embedding else ch, 4 * ch, ch)
        self.time_mix_motion_embed = _mlp(ch, 4 * ch, ch)
        # upstream's mixers see an all-zero image-only indicator: alpha = sigmoid(mix_factor) ("learned")
        self.time_mixer = AlphaBlender(0.0, merge_strategy="learned")
        self.time_mixer_motion = AlphaBlender(0.0, merge_strategy="learned") if hp.separate_motion_mixer else None

    def forward(self, x, context, emb, cond_view, b: int, t: int, v: int):
        n, c, h, w = x.shape
        hw = h * w
        d1, dm = context.shape[-1], cond_view.shape[1]
        x_in = x
        cv = F.interpolate(cond_view, size=(h, w), mode="bilinear")
        spatial_ctx = context[:, :, None].expand(b, t, v, d1).reshape(-1, 1, d1)
        camera_ctx = context[:, :, None].expand(b, t, hw, d1).reshape(-1, 1, d1)
        motion_ctx = cv.permute(0, 2, 3, 1).reshape(-1, 1, dm)

        x = self.norm(x).permute(0, 2, 3, 1).reshape(n, hw, c)
        x = self.proj_in(x)
        c = x.shape[-1]
        frame_ids = torch.arange(t, device=x.device).repeat(b)
        emb_time = self.time_mix_motion_embed(_sinusoid(frame_ids, self.proj_out.out_features).to(x.dtype))[:, None]
        if self.camera_embedding:
            emb_view = self.time_mix_time_embed(emb.reshape(b, t, v, -1)[:, 0].reshape(b * v, -1))[:, None]
        else:
            view_ids = torch.arange(v, device=x.device).repeat(b)
            emb_view = self.time_mix_time_embed(_sinusoid(view_ids, self.proj_out.out_features).to(x.dtype))[:, None]
        if self.use_3d_attention:
            emb_view = emb_view.expand(b * v, hw, c).reshape(-1, 1, c)
        motion_mixer = self.time_mixer_motion if self.time_mixer_motion is not None else self.time_mixer

        for block, view_block, motion_block in zip(self.transformer_blocks, self.time_mix_blocks, self.motion_blocks):
            x = block(x, encoder_hidden_states=spatial_ctx)
            # camera attention: over the V views
            if self.use_3d_attention:
                x = x.reshape(b, t, v, hw, c).permute(0, 2, 3, 1, 4).reshape(-1, t, c)  # (b v hw) t c
            else:
                x = x.reshape(b, t, v, hw, c).permute(0, 2, 1, 3, 4).reshape(b * v, t * hw, c)
            x_mix = view_block(x + emb_view, num_frames=v, encoder_hidden_states=camera_ctx)
            x = self.time_mixer(x_spatial=x, x_temporal=x_mix)
            # motion attention: over the T frames
            if self.use_3d_attention:
                x = x.reshape(b, v, hw, t, c).permute(0, 3, 1, 2, 4).reshape(b * t, v * hw, c)
            else:
                x = x.reshape(b, v, t, hw, c).permute(0, 2, 1, 3, 4).reshape(b * t, v * hw, c)
            x_mix = motion_block(x + emb_time, num_frames=t, encoder_hidden_states=motion_ctx)
            x = motion_mixer(x_spatial=x, x_temporal=x_mix)
            x = x.reshape(n, hw, c)

        x = self.proj_out(x)
        x = x.reshape(n, h, w, -1).permute(0, 3, 1, 2)
        return x + x_in


class SV4DUNet(nn.Module):
    """sgm `SpatialUNetModelWithTime` as SV4D / SV4D 2.0 configure it.

    forward(x, timesteps, context, y, cond_view) -> (N, out_channels, h, w)
      x: (N, in_channels, h, w), N = B*T*V rows in (b, t, v) order, the noisy latent concatenated with the
         cond-frame latent (scale 1.0)
      timesteps: (N,) continuous c_noise values (EDM: 0.25 * ln sigma)
      context: (B, T, context_dim) the CLIP image embedding of each time frame's input view
      y: (N, adm_in_channels) per-row ADM vector (cond_aug 256 + polar 512 + azimuth 512)
      cond_view: (B*V, motion_context_dim, h', w') latents (scale 1.0) of the V views at the anchor time frame
    T and V are read from the shapes: T = context.shape[1], V = cond_view.shape[0] // B.
    """

    def __init__(self, hp: SV4DHyper) -> None:
        super().__init__()
        self.hp = hp
        mc, temb = hp.model_channels, hp.time_embed_dim
        self.time_embed = _mlp(mc, temb, temb)
        self.label_emb = nn.Sequential(_mlp(hp.adm_in_channels, temb, temb))

        def attention(ch: int, depth: int) -> MotionSpatialTransformer:
            return MotionSpatialTransformer(ch, hp.heads(ch), hp.num_head_channels, depth, hp)

        self.input_blocks = nn.ModuleList([nn.ModuleList([nn.Conv2d(hp.in_channels, mc, 3, padding=1)])])
        chans, ch = [mc], mc
        levels = len(hp.channel_mult)
        for lv, mult in enumerate(hp.channel_mult):
            for _ in range(hp.num_res_blocks):
                layers = [_res_block(ch, mult * mc, temb)]
                ch = mult * mc
                if hp.attention_levels[lv]:
                    layers.append(attention(ch, hp.transformer_depth[lv]))
                self.input_blocks.append(nn.ModuleList(layers))
                chans.append(ch)
            if lv != levels - 1:
                self.input_blocks.append(nn.ModuleList([_Downsample(ch)]))
                chans.append(ch)
        self.middle_block = nn.ModuleList([_res_block(ch, ch, temb), attention(ch, hp.transformer_depth_middle),
                                           _res_block(ch, ch, temb)])
        self.output_blocks = nn.ModuleList()
        for lv in reversed(range(levels)):
            mult = hp.channel_mult[lv]
            for i in range(hp.num_res_blocks + 1):
                layers = [_res_block(ch + chans.pop(), mc * mult, temb)]
                ch = mc * mult
                if hp.attention_levels[lv]:
                    layers.append(attention(ch, hp.transformer_depth[lv]))
                if lv and i == hp.num_res_blocks:
                    layers.append(_Upsample(ch))
                self.output_blocks.append(nn.ModuleList(layers))
        self.out = nn.Sequential(nn.GroupNorm(32, ch, eps=1e-5), nn.SiLU(),
                                 nn.Conv2d(mc, hp.out_channels, 3, padding=1))

    @staticmethod
    def _run(block, h, emb, context, cond_view, ioi, b, t, v):
        from diffusers.models.resnet import SpatioTemporalResBlock

        for layer in block:
            if isinstance(layer, SpatioTemporalResBlock):
                h = layer(h, emb, image_only_indicator=ioi)
            elif isinstance(layer, MotionSpatialTransformer):
                h = layer(h, context, emb, cond_view, b, t, v)
            else:
                h = layer(h)
        return h

    def forward(self, x, timesteps, context, y, cond_view):
        n = x.shape[0]
        b, t = context.shape[0], context.shape[1]
        v = cond_view.shape[0] // b
        if b * t * v != n or cond_view.shape[0] != b * v:
            raise ValueError(f"x: {n} rows do not match context (B={b}, T={t}) x cond_view (B*V={cond_view.shape[0]})")
        emb = self.time_embed(_sinusoid(timesteps, self.hp.model_channels).to(x.dtype))
        emb = emb + self.label_emb(y.to(x.dtype))
        ioi = torch.zeros(b, t * v, dtype=x.dtype, device=x.device)  # upstream multiplies it by 0
        hs, h = [], x
        for block in self.input_blocks:
            h = self._run(block, h, emb, context, cond_view, ioi, b, t, v)
            hs.append(h)
        h = self._run(self.middle_block, h, emb, context, cond_view, ioi, b, t, v)
        for block in self.output_blocks:
            h = self._run(block, torch.cat([h, hs.pop()], dim=1), emb, context, cond_view, ioi, b, t, v)
        return self.out(h)

    # ---- the official key layout ---------------------------------------------------------------------------
    def sgm_names(self) -> dict[str, str]:
        """Own state-dict key -> upstream key (without `model.diffusion_model.`)."""
        from diffusers.models.resnet import SpatioTemporalResBlock

        res_paths = [p + "." for p, m in self.named_modules() if isinstance(m, SpatioTemporalResBlock)]
        names = {}
        for key in self.state_dict().keys():
            new = key
            for p in res_paths:
                if key.startswith(p):
                    rest = key[len(p):]
                    for old, sgm in _RES_TO_SGM:
                        if rest.startswith(old):
                            new = p + sgm + rest[len(old):]
                            break
                    else:
                        raise RuntimeError(f"unmapped res-block key {key}")
                    break
            names[key] = new
        return names

    def sgm_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights in upstream's key layout (what the official checkpoint holds under the UNet prefix)."""
        sd = self.state_dict()
        return {sgm: sd[own] for own, sgm in self.sgm_names().items()}

    def load_sgm_state_dict(self, sgm_sd: dict, dtype: torch.dtype | None = None) -> None:
        """Load upstream-layout weights strictly: every key on both sides, shapes equal (error names them)."""
        names = self.sgm_names()
        inverse = {v: k for k, v in names.items()}
        expected = self.state_dict()
        out, unexpected = {}, []
        for k, tensor in sgm_sd.items():
            own = inverse.get(k)
            if own is None:
                unexpected.append(k)
                continue
            if tuple(tensor.shape) != tuple(expected[own].shape):
                raise ValueError(f"checkpoint: {k!r} has shape {tuple(tensor.shape)}, "
                                 f"expected {tuple(expected[own].shape)}")
            out[own] = tensor.to(dtype) if dtype is not None else tensor
        missing = sorted(names[k] for k in set(expected) - set(out))
        if unexpected or missing:
            raise ValueError(f"checkpoint: SV4D UNet layout mismatch: {len(unexpected)} unexpected keys "
                             f"{unexpected[:5]}, {len(missing)} missing keys {missing[:5]}")
        self.load_state_dict(out, strict=True, assign=True)


def build_sv4d_unet(sgm_sd: dict, num_head_channels: int = 64, use_3d_attention: bool | None = None,
                    dtype: torch.dtype = torch.float32) -> SV4DUNet:
    """An `SV4DUNet` holding the weights of an upstream SV4D UNet state dict (strict, sizes from shapes)."""
    hp = SV4DHyper.from_state_dict(sgm_sd, num_head_channels, use_3d_attention)
    with torch.device("meta"):
        model = SV4DUNet(hp)
    model.load_sgm_state_dict(sgm_sd, dtype)
    return model.eval()


def sgm_key_shapes(hp: SV4DHyper) -> dict[str, tuple[int, ...]]:
    """Upstream key -> shape of the UNet that `hp` describes, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = SV4DUNet(hp)
    return {k: tuple(v.shape) for k, v in model.sgm_state_dict().items()}


def sv4d_unet_spec(name: str, shapes: Iterable[tuple[int, ...]], out_channels: int = 4) -> GraphSpec:
    """x f32[N,Cin,h,w], timesteps f32[N], context f32[B,T,D], y f32[N,A], cond_view f32[B*V,Cz,h,w]
    -> out f32[N,out,h,w] (N = B*T*V, B = 2 with classifier-free guidance; T, V fixed per graph)."""
    x, ts, ctx, y, cv = (tuple(s) for s in shapes)
    return GraphSpec(name, (TensorSpec("x", x, "float32"), TensorSpec("timesteps", ts, "float32"),
                            TensorSpec("context", ctx, "float32"), TensorSpec("y", y, "float32"),
                            TensorSpec("cond_view", cv, "float32")),
                     (TensorSpec("out", (x[0], out_channels, x[2], x[3]), "float32"),))


__all__ = ["SV4DHyper", "SV4DUNet", "MotionSpatialTransformer", "build_sv4d_unet", "sgm_key_shapes",
           "sv4d_unet_spec"]
