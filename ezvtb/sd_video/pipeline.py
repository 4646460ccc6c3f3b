"""`SDVideo`: ModelScope text-to-video and video-to-video sampling (sd-video's API).

The algorithm (ModelScope's, as sd-video runs it):

1. encode the prompt and the negative prompt (OpenCLIP ViT-H text tower, penultimate block);
2. start from Gaussian noise (1, 4, f, h/8, w/8), or, for video-to-video, from the VAE means of the
   initial frames (x 0.18215) noised to the DDIM step ``t_start - 1``;
3. DDIM (linear_sd betas, eps prediction, "leading + 1" timesteps, eta) over the remaining steps,
   classifier-free guidance ``uncond + scale * (cond - uncond)`` from two UNet calls per step;
4. decode each frame with the VAE, map [-1, 1] to [0, 1]: a (1, 3, f, H, W) float tensor.

Which runtime runs each network is decided once, here: ``backend="torch"`` runs the library
modules eagerly; any other backend runs them as exported ONNX graphs through
`ezvtb.engines.runner.GraphRunner` (one graph per input shape, cached by weights digest).
"""
from __future__ import annotations

import logging
import math
import os
from collections import OrderedDict
from typing import Any, Callable, Sequence

import torch

from ezvtb.engines.policy import RUNNER_BACKENDS, check_backend
from ezvtb.models.modelscope_t2v import spec as graph_specs
from ezvtb.sd_video.loader import T2VComponents, load_components, scheduler_config
from ezvtb.sd_video.tokenizer import tokenize

log = logging.getLogger(__name__)

DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
TEXT_CACHE = 8  # prompt embeddings kept per SDVideo


class UNetStep(torch.nn.Module):
    """eps = unet(latents (b, c, f, h, w), timestep (b,), context (b, L, D)): one denoiser call."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.unet(latents, timestep, encoder_hidden_states=context, return_dict=False)[0]


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


def make_scheduler(num_train_timesteps: int = 1000) -> Any:
    """ModelScope's DDIM sampler (`ezvtb.diffusion.schedulers.modelscope_ddim` when available)."""
    try:
        from ezvtb.diffusion.schedulers import modelscope_ddim
    except ImportError:
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(scheduler_config(num_train_timesteps))
    return modelscope_ddim(num_train_timesteps)


def ddim_timesteps(sched: Any, steps: int) -> list[int]:
    """Set `sched` to `steps` DDIM steps; ModelScope's descending timestep list.

    ``1 + arange(0, T, T // steps)`` clamped to T - 1, as ModelScope's ``ddim_sample_loop`` (when
    `steps` does not divide T this is more than `steps` steps and the first one is T - 1; each
    step still goes to ``t - T // steps``, which is what DDIMScheduler.step does).
    """
    sched.set_timesteps(steps)
    last = int(sched.config.num_train_timesteps) - 1
    return [min(int(t), last) for t in sched.timesteps]


def _check_backend(backend: Any) -> str:
    return check_backend(backend, RUNNER_BACKENDS)


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


class SDVideo:
    """Text-to-video / video-to-video with a ModelScope model folder (either layout).

    model_path: the ModelScope folder (configuration.json + 3 checkpoints) or a diffusers folder.
    device: where eager (``backend="torch"``) modules run; for exported backends "cpu" selects
        ONNX Runtime's CPU provider and anything else lets ``backend`` choose.
    dtype: float32, float16 or bfloat16: eager modules' dtype; exported graphs run fp16 for
        float16 and fp32 otherwise.
    amp: autocast the eager UNet on CUDA (ignored on CPU and by exported graphs).
    backend: "torch" (eager) or an `ezvtb.engines` backend ("auto", "cpu", "cuda", "tensorrt", ...).
    """

    def __init__(self, model_path: str | os.PathLike, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, amp: bool = True, *, backend: str = "auto") -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected torch.float32, torch.float16 or torch.bfloat16, got {dtype!r}")
        self.backend = _check_backend(backend)
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"device: expected a torch device such as 'cpu' or 'cuda', got {device!r}") from e
        self.dtype = dtype
        self.amp = bool(amp)
        eager = self.backend == "torch"
        if eager and self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} with backend='torch' needs CUDA, which this torch build/machine "
                             "lacks; use device='cpu' or an exported backend (backend='auto')")
        self.components: T2VComponents = load_components(model_path, dtype=dtype if eager else torch.float32)
        if eager:
            self.components.to(device=self.device)
        self.max_frames = self.components.max_frames
        self.scaling_factor = float(self.components.vae.config.scaling_factor)
        self.scheduler = make_scheduler(self.components.num_train_timesteps)
        self.cfg_batch = False  # True: cond and uncond in one batch-2 UNet call (same result, one graph)
        self.vae_batch = 1  # frames per VAE call (sd-video decodes frame by frame)
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        precision = "fp16" if dtype == torch.float16 else "fp32"
        if not eager and dtype == torch.bfloat16:
            log.info("dtype bfloat16: exported graphs run in fp32")
        if not eager and precision == "fp16" and not _gpu_provider():
            log.warning("dtype float16: no GPU execution provider here, the exported graphs run in fp32 on the CPU")
            precision = "fp32"
        c = self.components
        width = int(c.text_encoder.config.hidden_size)
        self.unet = self._runner(UNetStep(c.unet), lambda s: graph_specs.unet_spec(s), "t2v_unet", precision)
        self.text_encoder = self._runner(TextEncoderGraph(c.text_encoder),
                                         lambda s: graph_specs.text_encoder_spec(s, width), "t2v_text", precision)
        self.vae_decoder = self._runner(VaeDecoderGraph(c.vae), lambda s: graph_specs.vae_decoder_spec(s),
                                        "t2v_vae_dec", precision)
        self.vae_encoder = self._runner(VaeEncoderGraph(c.vae), lambda s: graph_specs.vae_encoder_spec(
            s, int(c.vae.config.latent_channels)), "t2v_vae_enc", precision)
        log.info("SDVideo: %s model from %s, backend %s, %s, max_frames %d", c.layout, c.path, self.backend,
                 DTYPES[dtype], self.max_frames)

    # -- runtime -------------------------------------------------------------------------------
    def _runner(self, module: torch.nn.Module, spec_for: Callable, name: str, precision: str) -> Callable:
        from ezvtb.engines.runner import GraphRunner

        module.eval()
        backend = "cpu" if (self.backend == "auto" and self.device.type == "cpu") else self.backend
        return GraphRunner(module, spec_for, name=name, backend=backend, precision=precision)

    def close(self) -> None:
        """Release the exported sessions (eager modules are left as they are)."""
        for r in (self.unet, self.text_encoder, self.vae_decoder, self.vae_encoder):
            r.close()

    def enable_xformers(self, enable: bool = True) -> None:
        """Accepted for sd-video compatibility: attention already runs through PyTorch SDPA
        (eager) or the exported graphs' fused attention; xformers is never used (it does not export)."""
        log.info("enable_xformers(%s): xformers is not used; attention runs through PyTorch "
                 "scaled_dot_product_attention (eager) or the exported graphs", bool(enable))

    def _autocast(self):
        if self.backend == "torch" and self.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16 if self.dtype != torch.bfloat16 else torch.bfloat16)
        import contextlib

        return contextlib.nullcontext()

    def _to_runtime(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "torch":
            return x.to(self.device, self.dtype if x.is_floating_point() else x.dtype)
        return x.to("cpu", torch.float32 if x.is_floating_point() else x.dtype).contiguous()

    @torch.no_grad()
    def encode_text(self, text: str) -> torch.Tensor:
        """(1, L, D) float32 CPU conditioning for `text` (cached for the last few prompts)."""
        if text in self._text_cache:
            self._text_cache.move_to_end(text)
            return self._text_cache[text]
        c = self.components
        ids = tokenize(c.tokenizer, [text], int(c.text_encoder.config.max_position_embeddings))
        ctx = self.text_encoder(self._to_runtime(ids)).float().cpu()
        self._text_cache[text] = ctx
        while len(self._text_cache) > TEXT_CACHE:
            self._text_cache.popitem(last=False)
        return ctx

    @torch.no_grad()
    def _eps(self, x: torch.Tensor, t: int, cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
        ts = torch.full((x.shape[0],), float(t))
        with self._autocast():
            if scale == 1.0:
                return self.unet(self._to_runtime(x), self._to_runtime(ts), self._to_runtime(cond)).float().cpu()
            if self.cfg_batch:
                both = self.unet(self._to_runtime(torch.cat([x, x])), self._to_runtime(torch.cat([ts, ts])),
                                 self._to_runtime(torch.cat([cond, uncond]))).float().cpu()
                e_c, e_u = both.chunk(2)
            else:
                e_c = self.unet(self._to_runtime(x), self._to_runtime(ts), self._to_runtime(cond)).float().cpu()
                e_u = self.unet(self._to_runtime(x), self._to_runtime(ts), self._to_runtime(uncond)).float().cpu()
        return _guide(e_u, e_c, scale)

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (f, 3, H, W) in [-1, 1] -> scaled latents (1, 4, f, H/8, W/8)."""
        means = [self.vae_encoder(self._to_runtime(chunk)).float().cpu()
                 for chunk in frames.split(self.vae_batch)]
        lat = torch.cat(means) * self.scaling_factor
        return lat.permute(1, 0, 2, 3).unsqueeze(0)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (1, 4, f, h, w) -> video (1, 3, f, 8h, 8w) in [0, 1]."""
        z = (latents[0].permute(1, 0, 2, 3) / self.scaling_factor).contiguous()
        images = torch.cat([self.vae_decoder(self._to_runtime(chunk)).float().cpu() for chunk in z.split(self.vae_batch)])
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
        seed: makes the noise reproducible.
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

        gen = torch.Generator()
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(seed)
        cond = self.encode_text(text)
        uncond = self.encode_text(text_neg) if scale != 1.0 else cond
        sched = make_scheduler(self.components.num_train_timesteps)
        ts = ddim_timesteps(sched, steps)
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
        """DDIM from latents `x` (1, 4, f, h, w) at ts[0] through ts (descending), guided by `scale`."""
        from tqdm import tqdm

        for t in tqdm(ts, desc="sampling", unit="step", disable=not bar):
            eps = self._eps(x, t, cond, uncond, scale)
            x = sched.step(eps, t, x, eta=eta, generator=generator, return_dict=False)[0]
        return x


def _gpu_provider() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    gpu = {"CUDAExecutionProvider", "TensorrtExecutionProvider", "DmlExecutionProvider"}
    return bool(gpu & set(ort.get_available_providers()))


def _guide(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    try:
        from ezvtb.diffusion.guidance import apply_guidance
    except ImportError:
        return uncond + scale * (cond - uncond)
    return apply_guidance(uncond, cond, torch.full((cond.shape[2],), scale), frame_axis=2)


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
