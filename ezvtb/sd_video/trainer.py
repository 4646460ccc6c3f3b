"""Fine-tuning the ModelScope text-to-video UNet (sd-video's ``trainer`` API).

Only the UNet trains, in torch (eager), on the epsilon-prediction MSE: a batch of videos is
VAE-encoded frame by frame (x 0.18215), noised at uniformly drawn timesteps with the training
schedule (linear_sd betas), and the UNet, conditioned on the frozen text encoder's output for the
captions, predicts the noise. AdamW; options: gradient checkpointing, mixed precision (autocast
fp16 / bf16, loss scaling for fp16 on CUDA), gradient accumulation, gradient clipping.

Checkpoints are complete diffusers-layout model folders (what `SDVideo` and the loader read)
plus ``training_state.pt`` (optimizer, step, loss scaler), so ``output_dir/checkpoint-<step>``
can be sampled from (``SDVideo(path)`` re-exports the new UNet to ONNX) and training resumed
(``resume_from="latest"``).

Batches: ``{"pixel_values": (b, f, c, h, w) in [-1, 1], "text": [b captions]}`` — what
`collate_fn` builds from `MiniTestSet` (a folder of ``0001.gif`` + ``0001.gif.txt``).
"""
from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from ezvtb.atomic import atomic_write
from ezvtb.diffusion.schedulers import modelscope_ddim
from ezvtb.sd_video.loader import save_diffusers_folder
from ezvtb.sd_video.media import _check_size
from ezvtb.sd_video.tokenizer import tokenize

log = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"
MIXED_PRECISION = ("no", "fp16", "bf16")


class MiniTestSet(torch.utils.data.Dataset):
    """Videos with captions: ``<name>.gif`` + ``<name>.gif.txt`` in one folder (sorted by name).

    Items are ``{"frames": [PIL RGB images], "text": caption}``.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"MiniTestSet: {str(self.path)!r} is not a folder")
        self.items = sorted(p for p in self.path.iterdir() if p.suffix.lower() == ".gif"
                            and p.with_name(p.name + ".txt").is_file())
        if not self.items:
            raise ValueError(f"MiniTestSet: {str(self.path)!r} has no <name>.gif with a <name>.gif.txt caption")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        from PIL import Image, ImageSequence

        p = self.items[i]
        with Image.open(p) as im:
            frames = [f.convert("RGB") for f in ImageSequence.Iterator(im)]
        return {"frames": frames, "text": p.with_name(p.name + ".txt").read_text(encoding="utf-8").strip()}


def collate_fn(batch: Sequence[dict], num_frames: int = 16, image_size: tuple[int, int] = (256, 256),
               dtype: torch.dtype = torch.float32) -> dict:
    """``{"pixel_values": (b, num_frames, 3, h, w) in [-1, 1] of dtype, "text": [...]}``.

    Takes the first `num_frames` frames of each video (repeating the last one if it is shorter),
    resized to `image_size` (w, h).
    """
    from ezvtb.sd_video.pipeline import frames_to_tensor

    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames: expected an int >= 1, got {num_frames!r}")
    size = _check_size(image_size, "image_size")
    videos, texts = [], []
    for item in batch:
        frames = list(item["frames"])[:num_frames]
        if not frames:
            raise ValueError("collate_fn: a batch item has no frames")
        frames += [frames[-1]] * (num_frames - len(frames))
        videos.append(frames_to_tensor(frames, size))
        texts.append(str(item["text"]))
    return {"pixel_values": torch.stack(videos).to(dtype), "text": texts}


def checkpoint_unet_blocks(unet: torch.nn.Module) -> int:
    """Recompute each down/mid/up block of a UNet3DConditionModel in the backward pass.

    diffusers 0.42 does not offer gradient checkpointing for UNet3DConditionModel, so each block's
    ``forward`` is wrapped in ``torch.utils.checkpoint`` (non-reentrant) while gradients are enabled.
    Outputs are unchanged. Returns the number of wrapped blocks.
    """
    from torch.utils.checkpoint import checkpoint

    def wrap(forward):
        def run(*args, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(forward, *args, use_reentrant=False, **kwargs)
            return forward(*args, **kwargs)

        run.checkpointed = True
        return run

    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    for b in blocks:
        if not getattr(b.forward, "checkpointed", False):
            b.forward = wrap(b.forward)
    return len(blocks)


def set_resnet_dropout(unet: torch.nn.Module, p: float) -> int:
    """Set the dropout probability of every ResnetBlock2D of a UNet3DConditionModel; returns their count.

    ModelScope's UNetSD applies ``unet_dropout`` (0.1) in each ResBlock before its second conv;
    diffusers' UNet3DConditionModel builds the same blocks (ResnetBlock2D, dropout at the same place)
    but does not pass a dropout, so they have 0.0. Dropout acts only in train mode: eval outputs,
    sampling and export are unchanged. Its temporal convolutions already use 0.1, as upstream.
    """
    from diffusers.models.resnet import ResnetBlock2D

    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: expected a number in [0, 1), got {p!r}")
    resnets = [m for m in unet.modules() if isinstance(m, ResnetBlock2D)]
    for m in resnets:
        m.dropout.p = float(p)
    return len(resnets)


class SDVideoTrainer:
    """Trains ``model.components.unet`` of an `SDVideo` on eps-prediction MSE.

    model: an `SDVideo` (its UNet is trained in place; text encoder and VAE stay frozen).
    dataloader: yields batches as `collate_fn` builds them.
    output_dir: ``checkpoint-<step>/`` folders are written here (atomically).
    lr, weight_decay, betas, eps: AdamW. max_grad_norm: clipping (None: off).
    gradient_accumulation_steps: batches per optimizer step.
    gradient_checkpointing: recompute activations in the backward pass (less memory).
    dropout: of the UNet's ResnetBlock2Ds while training (None: the model's ``unet_dropout``,
        ModelScope's 0.1); diffusers builds them with 0.0. Eval/sampling/export are unaffected.
    mixed_precision: "no", "fp16" or "bf16" autocast of the UNet forward.
    resume_from: None, "latest" (the newest checkpoint in output_dir) or a checkpoint folder.
    device: where to train (default: "cuda" if available, else "cpu").
    seed: timesteps/noise generator seed.
    """

    def __init__(self, model: Any, dataloader: Iterable[dict], output_dir: str | os.PathLike, *, lr: float = 1e-5,
                 weight_decay: float = 1e-2, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 max_grad_norm: float | None = 1.0, gradient_accumulation_steps: int = 1,
                 gradient_checkpointing: bool = False, dropout: float | None = None, mixed_precision: str = "no",
                 resume_from: str | os.PathLike | None = None, device: str | torch.device | None = None,
                 seed: int = 0) -> None:
        if mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision: expected one of {list(MIXED_PRECISION)}, got {mixed_precision!r}")
        if isinstance(gradient_accumulation_steps, bool) or not isinstance(gradient_accumulation_steps, int) \
                or gradient_accumulation_steps < 1:
            raise ValueError(f"gradient_accumulation_steps: expected an int >= 1, got {gradient_accumulation_steps!r}")
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"lr: expected a positive number, got {lr!r}")
        self.model = model
        self.components = model.components
        self.dataloader = dataloader
        self.output_dir = Path(output_dir)
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.accum = gradient_accumulation_steps
        self.max_grad_norm = max_grad_norm
        self.mixed_precision = mixed_precision
        c = self.components
        self.unet = c.unet
        self.dropout = float(getattr(c, "unet_dropout", 0.1)) if dropout is None else dropout
        set_resnet_dropout(self.unet, self.dropout)
        self.unet.to(self.device, torch.float32).train().requires_grad_(True)
        if gradient_checkpointing:
            checkpoint_unet_blocks(self.unet)
        for frozen in (c.vae, c.text_encoder):
            frozen.to(self.device).eval().requires_grad_(False)
        self.noise_schedule = modelscope_ddim(c.num_train_timesteps)
        self.optimizer = torch.optim.AdamW([p for p in self.unet.parameters() if p.requires_grad], lr=lr,
                                           weight_decay=weight_decay, betas=betas, eps=eps)
        use_scaler = mixed_precision == "fp16" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.generator = torch.Generator().manual_seed(seed)
        self.step = 0
        self.losses: list[float] = []
        if resume_from is not None:
            self.resume(resume_from)

    # -- one loss ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_batch(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(scaled latents (b, 4, f, h/8, w/8), context (b, L, D)) of a batch, frozen parts in torch."""
        c = self.components
        px = batch["pixel_values"]
        if not isinstance(px, torch.Tensor) or px.ndim != 5:
            raise ValueError(f"batch['pixel_values']: expected a (b, f, c, h, w) tensor, got "
                             f"{getattr(px, 'shape', type(px).__name__)}")
        texts = list(batch["text"])
        if len(texts) != px.shape[0]:
            raise ValueError(f"batch['text']: expected {px.shape[0]} captions, got {len(texts)}")
        b, f = px.shape[:2]
        vae_dtype = next(c.vae.parameters()).dtype
        frames = px.reshape(b * f, *px.shape[2:]).to(self.device, vae_dtype)
        means = torch.cat([c.vae.encode(chunk).latent_dist.mean for chunk in frames.split(4)])
        lat = means.float() * float(c.vae.config.scaling_factor)
        lat = lat.reshape(b, f, *lat.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()
        ids = tokenize(c.tokenizer, texts, int(c.text_encoder.config.max_position_embeddings)).to(self.device)
        ctx = c.text_encoder(input_ids=ids).last_hidden_state.float()
        return lat, ctx

    def loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """Eps-prediction MSE of the UNet on `batch` (noise and timesteps drawn from `generator`)."""
        lat, ctx = self.encode_batch(batch)
        g = generator if generator is not None else self.generator
        noise = torch.randn(lat.shape, generator=g).to(self.device)
        t = torch.randint(0, self.components.num_train_timesteps, (lat.shape[0],), generator=g).to(self.device)
        noisy = self.noise_schedule.add_noise(lat, noise, t)
        amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.mixed_precision)
        with torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
            pred = self.unet(noisy, t, encoder_hidden_states=ctx, return_dict=False)[0]
        return torch.nn.functional.mse_loss(pred.float(), noise.float())

    # -- training ------------------------------------------------------------------------------
    def train(self, save_every: int = 1000, log_every: int = 10, max_steps: int | None = None,
              epochs: int | None = None) -> list[float]:
        """Train until `max_steps` optimizer steps (default: one pass over the dataloader, or
        `epochs` passes); checkpoint every `save_every` steps and at the end. Returns the
        per-step losses of this call."""
        from tqdm import tqdm

        for name, v in (("save_every", save_every), ("log_every", log_every)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
            raise ValueError(f"max_steps: expected an int >= 1, got {max_steps!r}")
        losses: list[float] = []
        target = None if max_steps is None else self.step + max_steps
        passes = epochs if epochs is not None else (1 if max_steps is None else None)
        bar = tqdm(total=max_steps, desc="training", unit="step")
        pending, acc_loss, epoch = 0, 0.0, 0
        try:
            while passes is None or epoch < passes:
                for batch in self.dataloader:
                    loss = self.loss(batch) / self.accum
                    self.scaler.scale(loss).backward()
                    acc_loss += float(loss.detach())
                    pending += 1
                    if pending < self.accum:
                        continue
                    self._optimizer_step()
                    losses.append(acc_loss)
                    self.losses.append(acc_loss)
                    pending, acc_loss = 0, 0.0
                    bar.update()
                    if self.step % log_every == 0:
                        log.info("step %d: loss %.5f", self.step, losses[-1])
                        bar.set_postfix(loss=f"{losses[-1]:.4f}")
                    if self.step % save_every == 0:
                        self.save()
                    if target is not None and self.step >= target:
                        break
                epoch += 1
                if target is not None and self.step >= target:
                    break
        finally:
            bar.close()
        if losses and self.step % save_every:
            self.save()
        return losses

    def _optimizer_step(self) -> None:
        if self.max_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.unet.parameters(), self.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint_dir(self, step: int | None = None) -> Path:
        return self.output_dir / f"checkpoint-{self.step if step is None else step}"

    def save(self) -> Path:
        """Write ``checkpoint-<step>``: a diffusers model folder + training_state.pt."""
        state = {"step": self.step, "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                 "losses": torch.tensor(self.losses, dtype=torch.float64)}
        buf = io.BytesIO()
        torch.save(state, buf)
        was_training = self.unet.training
        self.unet.eval()
        try:
            path = save_diffusers_folder(self.components, self.checkpoint_dir(), unet=self.unet,
                                         extra_files={STATE_FILE: buf.getvalue()})
        finally:
            self.unet.train(was_training)
        with atomic_write(self.output_dir / "latest.txt", "w") as f:
            f.write(path.name + "\n")
        log.info("saved %s", path)
        return path

    def resume(self, where: str | os.PathLike) -> None:
        """Load UNet weights, optimizer and step from a checkpoint folder (or "latest")."""
        from ezvtb.sd_video.loader import _checkpoint, _strict_load, _weights_file

        if str(where) == "latest":
            marker = self.output_dir / "latest.txt"
            if not marker.is_file():
                raise FileNotFoundError(f"resume_from='latest': no checkpoint in {str(self.output_dir)!r}")
            where = self.output_dir / marker.read_text().strip()
        folder = Path(where)
        if not (folder / STATE_FILE).is_file():
            raise FileNotFoundError(f"resume_from: {str(folder)!r} has no {STATE_FILE}")
        _strict_load(self.unet, _checkpoint(_weights_file(folder / "unet", "unet")), f"{folder.name}/unet")
        state = torch.load(folder / STATE_FILE, map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.losses = [float(x) for x in state.get("losses", torch.zeros(0))]
        log.info("resumed from %s at step %d", folder, self.step)
