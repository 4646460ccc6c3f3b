"""`SDVideo`: ModelScope text-to-video and video-to-video sampling (sd-video's API).

The algorithm (ModelScope's, as sd-video runs it):

1. encode the prompt and the negative prompt (OpenCLIP ViT-H text tower, penultimate block);
2. start from Gaussian noise (1, 4, f, h/8, w/8), or, for video-to-video, from the VAE means of the
   initial frames (x 0.18215) noised to the DDIM step ``t_start - 1``;
3. DDIM (linear_sd betas, eps prediction, "leading + 1" timesteps, eta) over the remaining steps
   (the shared loop `ezvtb.diffusion.sampling.denoise` over `modelscope_ddim`), classifier-free
   guidance ``uncond + scale * (cond - uncond)`` (`ezvtb.diffusion.guidance.guided_model`);
4. decode each frame with the VAE, map [-1, 1] to [0, 1]: a (1, 3, f, H, W) float tensor.

The networks and their runtime come from `ezvtb.diffusion.networks.NetworkSet`: ``backend="torch"``
runs the library modules eagerly; any other backend runs them as exported ONNX graphs (one graph per
input shape, cached by weights digest), with sessions that live until `close`.
"""
from __future__ import annotations

import logging
import math
import os
from collections import OrderedDict
from typing import Any, Callable, Sequence

import torch

from ezvtb.diffusion.guidance import guided_model
from ezvtb.diffusion.networks import EAGER, NetworkSet
from ezvtb.diffusion.sampling import denoise, make_generator
from ezvtb.diffusion.schedulers import modelscope_ddim
from ezvtb.diffusion.unet3d import UNet3DStep
from ezvtb.models.modelscope_t2v import spec as graph_specs
from ezvtb.sd_video.loader import T2VComponents, load_components
from ezvtb.sd_video.tokenizer import tokenize

log = logging.getLogger(__name__)

DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
TEXT_CACHE = 8  # prompt embeddings kept per SDVideo


class TextEncoderGraph(torch.nn.Module):
    """context (b, L, D) = the text tower's final-layer-normed last hidden state for token ids (b, L)."""

    def __init__(self, text_encoder: torch.nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids=input_ids).last_hidden_state


class VaeDecoderGraph(torch.nn.Module):
    """images (n, 3, 8h, 8w) in about [-1, 1] from unscaled latents (n, 4, h, w)."""

    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents, return_dict=False)[0]


class VaeEncoderGraph(torch.nn.Module):
    """Posterior means (n, 4, H/8, W/8) of images (n, 3, H, W) in [-1, 1] (unscaled)."""

    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images).latent_dist.mean


def _check_int(name: str, v: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name}: expected an int {rng}, got {v!r}")
    return v


def _check_float(name: str, v: Any, lo: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (lo is not None and v < lo):
        raise ValueError(f"{name}: expected a finite number{f' >= {lo}' if lo is not None else ''}, got {v!r}")
    return float(v)


def _check_image_size(image_size: Any, multiple: int, why: str) -> tuple[int, int]:
    ok = (isinstance(image_size, (tuple, list)) and len(image_size) == 2
          and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in image_size))
    if not ok or image_size[0] % multiple or image_size[1] % multiple:
        raise ValueError(f"image_size: expected (width, height), positive multiples of {multiple} ({why}), "
                         f"got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


class SDVideo(NetworkSet):
    """Text-to-video / video-to-video with a ModelScope model folder (either layout).

    model_path: the ModelScope folder (configuration.json + 3 checkpoints) or a diffusers folder.
    device: where eager (``backend="torch"``) modules run; with ``backend="auto"`` a CPU device selects
        ONNX Runtime's CPU provider (any other device lets the engines' policy choose).
    dtype: float32, float16 or bfloat16: eager modules' dtype; exported graphs run fp16 for float16
        where the backend runs half precision (the engines' policy; fp32 on the CPU) and fp32 otherwise.
    amp: autocast the eager UNet on CUDA (ignored on CPU and by exported graphs).
    backend: "torch" (eager) or an `ezvtb.engines` backend ("auto", "cpu", "cuda", "tensorrt", ...).
    Networks: ``unet``, ``text_encoder``, ``vae_decoder``, ``vae_encoder`` (persistent sessions).
    """

    def __init__(self, model_path: str | os.PathLike, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, amp: bool = True, *, backend: str = "auto") -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected torch.float32, torch.float16 or torch.bfloat16, got {dtype!r}")
        self.init_networks(backend=backend, device=device, half=None if dtype == torch.float16 else False)
        self.dtype = dtype
        self.amp = bool(amp)
        eager = self.backend == EAGER
        self.components: T2VComponents = load_components(model_path, dtype=dtype if eager else torch.float32)
        self.max_frames = self.components.max_frames
        self.scaling_factor = float(self.components.vae.config.scaling_factor)
        self.scheduler = modelscope_ddim(self.components.num_train_timesteps)
        self.cfg_batch = False  # True: cond and uncond in one batch-2 UNet call (same result, one graph)
        self.vae_batch = 1  # frames per VAE call (sd-video decodes frame by frame)
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        if not eager and dtype != torch.float32 and self.precision == "fp32":
            log.info("dtype %s: the exported graphs run in fp32 on backend %s", DTYPES[dtype], self.backend)
        c = self.components
        width = int(c.text_encoder.config.hidden_size)
        amp_dtype = (torch.bfloat16 if dtype == torch.bfloat16 else torch.float16) if self.amp else None
        self.add_network("unet", UNet3DStep(c.unet), graph_specs.unet_spec, graph_name="t2v_unet",
                         autocast=amp_dtype)
        self.add_network("text_encoder", TextEncoderGraph(c.text_encoder),
                         lambda s: graph_specs.text_encoder_spec(s, width), graph_name="t2v_text")
        self.add_network("vae_decoder", VaeDecoderGraph(c.vae), graph_specs.vae_decoder_spec,
                         graph_name="t2v_vae_dec")
        self.add_network("vae_encoder", VaeEncoderGraph(c.vae), lambda s: graph_specs.vae_encoder_spec(
            s, int(c.vae.config.latent_channels)), graph_name="t2v_vae_enc")
        log.info("SDVideo: %s model from %s, backend %s, %s, max_frames %d", c.layout, c.path, self.backend,
                 DTYPES[dtype], self.max_frames)

    source_kind = "folder"

    @classmethod
    def from_source(cls, path: Any, **options: Any) -> "SDVideo":
        return cls(path, **options)

    # -- runtime -------------------------------------------------------------------------------
    @property
    def unet(self) -> Callable:
        return self.network("unet")

    @property
    def text_encoder(self) -> Callable:
        return self.network("text_encoder")

    @property
    def vae_decoder(self) -> Callable:
        return self.network("vae_decoder")

    @property
    def vae_encoder(self) -> Callable:
        return self.network("vae_encoder")

    def enable_xformers(self, enable: bool = True) -> None:
        """Accepted for sd-video compatibility: attention already runs through PyTorch SDPA
        (eager) or the exported graphs' fused attention; xformers is never used (it does not export)."""
        log.info("enable_xformers(%s): xformers is not used; attention runs through PyTorch "
                 "scaled_dot_product_attention (eager) or the exported graphs", bool(enable))

    @torch.no_grad()
    def encode_text(self, text: str) -> torch.Tensor:
        """(1, L, D) float32 CPU conditioning for `text` (cached for the last few prompts)."""
        if text in self._text_cache:
            self._text_cache.move_to_end(text)
            return self._text_cache[text]
        c = self.components
        ids = tokenize(c.tokenizer, [text], int(c.text_encoder.config.max_position_embeddings))
        ctx = self.text_encoder(ids).float()
        self._text_cache[text] = ctx
        while len(self._text_cache) > TEXT_CACHE:
            self._text_cache.popitem(last=False)
        return ctx

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (f, 3, H, W) in [-1, 1] -> scaled latents (1, 4, f, H/8, W/8)."""
        means = [self.vae_encoder(chunk.float()) for chunk in frames.split(self.vae_batch)]
        lat = torch.cat(means) * self.scaling_factor
        return lat.permute(1, 0, 2, 3).unsqueeze(0)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (1, 4, f, h, w) -> video (1, 3, f, 8h, 8w) in [0, 1]."""
        z = (latents[0].permute(1, 0, 2, 3) / self.scaling_factor).contiguous()
        images = torch.cat([self.vae_decoder(chunk) for chunk in z.split(self.vae_batch)])
        video = ((images.clamp(-1.0, 1.0) + 1.0) / 2.0).permute(1, 0, 2, 3).unsqueeze(0)
        return video.contiguous()

    # -- the sd-video call ---------------------------------------------------------------------
    def __call__(self, text: str, text_neg: str = "", guidance_scale: float = 9.0, timesteps: int = 50,
                 image_size: tuple[int, int] = (256, 256), num_frames: int | None = 16, eta: float = 0.0,
                 bar: bool = False, initial_frames: Sequence[Any] | None = None, t_start: int | None = None,
                 *, seed: int | None = None) -> torch.Tensor:
        """Sample a video: (1, 3, f, h, w) float32 CPU tensor in [0, 1] (`save_gif` takes it).

        text / text_neg: prompt and negative prompt. guidance_scale: CFG scale (two UNet calls per
        step). timesteps: DDIM steps. image_size: (width, height), multiples of 8 (of 64 with
        initial_frames). num_frames: frames to generate (None: the model's max_frames; ignored
        with initial_frames, whose length is used). eta: DDIM noise. bar: tqdm bar.
        initial_frames: video-to-video input (PIL images or HxWx3 uint8 arrays, e.g. from
        `load_sequence`), resized to image_size. t_start: DDIM steps to run from the noised
        input, in [0, timesteps] (default: timesteps; ``round(timesteps * strength)`` in sd-video).
        seed: makes the noise reproducible. Progress: ``progress_callback("denoise", done, total)``.
        """
        if not isinstance(text, str):
            raise ValueError(f"text: expected a string, got {type(text).__name__}")
        if not isinstance(text_neg, str):
            raise ValueError(f"text_neg: expected a string, got {type(text_neg).__name__}")
        scale = _check_float("guidance_scale", guidance_scale)
        steps = _check_int("timesteps", timesteps, 1, self.components.num_train_timesteps)
        eta = _check_float("eta", eta, 0.0)
        if seed is not None:
            _check_int("seed", seed, 0)
        frames = None
        if initial_frames is not None:
            w, h = _check_image_size(image_size, 64, "video-to-video")
            frames = frames_to_tensor(initial_frames, (w, h))
            t_start = steps if t_start is None else _check_int("t_start", t_start, 0, steps)
            f = frames.shape[0]
        else:
            w, h = _check_image_size(image_size, 8, "the VAE downsamples by 8")
            if t_start is not None:
                raise ValueError("t_start: only meaningful with initial_frames (video-to-video); got "
                                 f"t_start={t_start!r} without initial_frames")
            f = self.max_frames if num_frames is None else _check_int("num_frames", num_frames, 1)

        gen = make_generator(seed)
        cond = self.encode_text(text)
        uncond = self.encode_text(text_neg) if scale != 1.0 else cond
        sched = modelscope_ddim(self.components.num_train_timesteps)
        sched.set_timesteps(steps)
        ts = [int(t) for t in sched.timesteps]
        c_lat = int(self.components.unet.config.in_channels)
        if frames is None:
            x = torch.randn((1, c_lat, f, h // 8, w // 8), generator=gen)
        else:
            x0 = self.encode_frames(frames)
            ts = ts[steps - t_start:]
            if ts:
                noise = torch.randn(x0.shape, generator=gen)
                x = sched.add_noise(x0, noise, torch.tensor([ts[0]]))
            else:
                x = x0
        x = self.denoise(x, sched, ts, cond, uncond, scale, eta, gen, bar)
        return self.decode_latents(x)

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sched: Any, ts: Sequence[int], cond: torch.Tensor, uncond: torch.Tensor,
                scale: float, eta: float = 0.0, generator: torch.Generator | None = None,
                bar: bool = False) -> torch.Tensor:
        """DDIM from latents `x` (1, 4, f, h, w) at ts[0] through ts (descending; a tail of the timesteps
        `sched` is set to), classifier-free guided by `scale` (`cfg_batch`: one batched UNet call per step)."""
        if not ts:
            return x
        unet = self.unet

        def eps(x_t: torch.Tensor, t: Any, context: torch.Tensor) -> torch.Tensor:
            return unet(x_t, torch.full((x_t.shape[0],), float(t)), context)

        fn = guided_model(eps, (cond,), (uncond,), scale, frame_axis=2, batched=self.cfg_batch)
        return denoise(sched, fn, x, sched.num_inference_steps, generator=generator or make_generator(None),
                       scale_noise=False, timesteps=ts, progress=bar, desc="sampling",
                       callback=self.step_callback("denoise", len(ts)), eta=eta)


def frames_to_tensor(frames: Sequence[Any], size: tuple[int, int]) -> torch.Tensor:
    """PIL images or HxWx3 uint8 arrays -> (f, 3, h, w) float32 in [-1, 1], resized to size (w, h)."""
    import numpy as np
    from PIL import Image

    if isinstance(frames, (str, bytes, os.PathLike)) or not hasattr(frames, "__len__"):
        raise ValueError(f"initial_frames: expected a list of images (e.g. from load_sequence), got "
                         f"{type(frames).__name__}")
    if len(frames) == 0:
        raise ValueError("initial_frames: expected at least one frame, got an empty sequence")
    out = []
    for i, fr in enumerate(frames):
        if isinstance(fr, Image.Image):
            im = fr.convert("RGB")
        elif isinstance(fr, np.ndarray) and fr.ndim == 3 and fr.shape[2] == 3 and fr.dtype == np.uint8:
            im = Image.fromarray(fr)
        else:
            raise ValueError(f"initial_frames[{i}]: expected a PIL image or an HxWx3 uint8 array, got "
                             f"{type(fr).__name__}{getattr(fr, 'shape', '')}")
        if im.size != size:
            im = im.resize(size, Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
    return torch.stack(out)
