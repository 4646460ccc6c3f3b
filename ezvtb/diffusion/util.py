"""The diffusion utilities of latent-diffusion's ``diffusionmodules/util``, written from
the seed's description: beta schedules, DDIM timesteps and parameters, timestep embeddings, the
spatial/temporal `AlphaBlender`, gradient checkpointing (`CheckpointFunction`, a custom autograd
function that recomputes the forward pass in backward) and small module helpers.

Bad arguments raise the exception type the seed names (`make_beta_schedule`: ValueError;
`make_ddim_timesteps`: NotImplementedError for an unknown method), otherwise ValueError, with a
message naming the argument. ``verbose`` output goes to the ``ezvtb.diffusion`` logger (INFO).
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger("ezvtb.diffusion")

BETA_SCHEDULES = ("linear", "cosine", "squaredcos_cap_v2", "sqrt_linear", "sqrt")
DDIM_METHODS = ("uniform", "quad")
MERGE_STRATEGIES = ("learned", "fixed", "learned_with_images")


def _positive_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
    return int(v)


# -- schedules ----------------------------------------------------------------------------------
def make_beta_schedule(schedule: str, n_timestep: int, linear_start: float = 1e-4, linear_end: float = 2e-2,
                       cosine_s: float = 8e-3) -> np.ndarray:
    """float64 betas (n_timestep,) for `schedule`:

    linear: sqrt-spaced (linspace(sqrt(start), sqrt(end))**2, latent diffusion's "linear");
    cosine: Nichol & Dhariwal's cosine alphas_cumprod with offset `cosine_s`, betas clipped to [0, 0.999];
    squaredcos_cap_v2: `betas_for_alpha_bar` of cos((t + 0.008) / 1.008 * pi / 2)**2;
    sqrt_linear: linspace(start, end); sqrt: sqrt(linspace(start, end)).
    Raises ValueError for an unknown schedule.
    """
    if schedule not in BETA_SCHEDULES:
        raise ValueError(f"schedule: expected one of {list(BETA_SCHEDULES)}, got {schedule!r}")
    n = _positive_int("n_timestep", n_timestep)
    if schedule == "linear":
        betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, n, dtype=torch.float64) ** 2
    elif schedule == "cosine":
        steps = torch.arange(n + 1, dtype=torch.float64) / n + cosine_s
        alphas_cumprod = torch.cos(steps / (1 + cosine_s) * math.pi / 2) ** 2
        alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
        betas = (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(0, 0.999)
    elif schedule == "squaredcos_cap_v2":
        return betas_for_alpha_bar(n, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2)
    elif schedule == "sqrt_linear":
        betas = torch.linspace(linear_start, linear_end, n, dtype=torch.float64)
    else:  # sqrt
        betas = torch.linspace(linear_start, linear_end, n, dtype=torch.float64) ** 0.5
    return betas.numpy()


def make_ddim_timesteps(ddim_discr_method: str, num_ddim_timesteps: int, num_ddpm_timesteps: int,
                        verbose: bool = True) -> np.ndarray:
    """The DDIM sampler's training-timestep indices, ascending, each +1 (so the last step's
    previous alpha is alphas_cumprod[0]): "uniform" = arange(0, T, T // S) + 1, "quad" =
    int(linspace(0, sqrt(0.8 T), S)**2) + 1. NotImplementedError for another method."""
    if ddim_discr_method not in DDIM_METHODS:
        raise NotImplementedError(f"ddim_discr_method: there is no DDIM discretization method called "
                                  f"{ddim_discr_method!r} (expected one of {list(DDIM_METHODS)})")
    s = _positive_int("num_ddim_timesteps", num_ddim_timesteps)
    t = _positive_int("num_ddpm_timesteps", num_ddpm_timesteps)
    if s > t:
        raise ValueError(f"num_ddim_timesteps: expected at most num_ddpm_timesteps ({t}), got {s}")
    if ddim_discr_method == "uniform":
        steps = np.arange(0, t, t // s)
    else:
        steps = (np.linspace(0, np.sqrt(t * 0.8), s) ** 2).astype(int)
    out = steps + 1
    if verbose:
        log.info("Selected timesteps for ddim sampler: %s", out)
    return out


def make_ddim_sampling_parameters(alphacums: Any, ddim_timesteps: Any, eta: float,
                                  verbose: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sigmas, alphas, alphas_prev) of the DDIM sampler (Song et al. 2021, eq. 16):

    alphas = alphacums[ddim_timesteps]; alphas_prev = [alphacums[0], alphas[:-1]...];
    sigmas = eta * sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev)).
    """
    a = np.asarray(alphacums.detach().cpu().numpy() if isinstance(alphacums, torch.Tensor) else alphacums)
    idx = np.asarray(ddim_timesteps)
    if a.ndim != 1:
        raise ValueError(f"alphacums: expected a 1-D sequence, got shape {list(a.shape)}")
    if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"ddim_timesteps: expected a non-empty 1-D integer sequence, got {idx!r}")
    if idx.min() < 0 or idx.max() >= a.size:
        raise ValueError(f"ddim_timesteps: indices must lie in [0, {a.size}), got {idx.min()}..{idx.max()}")
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or eta < 0:
        raise ValueError(f"eta: expected a number >= 0, got {eta!r}")
    alphas = a[idx]
    alphas_prev = np.asarray([a[0]] + a[idx[:-1]].tolist())
    sigmas = eta * np.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
    if verbose:
        log.info("Selected alphas for ddim sampler: a_t: %s; a_(t-1): %s", alphas, alphas_prev)
        log.info("For the chosen value of eta, which is %s, this results in the following sigma_t schedule "
                 "for ddim sampler %s", eta, sigmas)
    return sigmas, alphas, alphas_prev


def betas_for_alpha_bar(num_diffusion_timesteps: int, alpha_bar: Callable[[float], float],
                        max_beta: float = 0.999) -> np.ndarray:
    """Betas that discretise alpha_bar(t), t in [0, 1] (the cumulative product of 1 - beta):
    beta_i = min(1 - alpha_bar((i+1)/T) / alpha_bar(i/T), max_beta)."""
    n = _positive_int("num_diffusion_timesteps", num_diffusion_timesteps)
    if not callable(alpha_bar):
        raise ValueError(f"alpha_bar: expected a callable t -> alpha_bar(t), got {type(alpha_bar).__name__}")
    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    return np.array(betas)


def extract_into_tensor(a: torch.Tensor, t: torch.Tensor, x_shape: Sequence[int]) -> torch.Tensor:
    """``a[t]`` per batch element, shaped (b, 1, ..., 1) to broadcast against a tensor of `x_shape`."""
    if t.dim() < 1:
        raise ValueError(f"t: expected at least one (batch) dimension, got a {t.dim()}-d tensor")
    b = t.shape[0]
    return a.gather(-1, t).reshape(b, *((1,) * (len(x_shape) - 1)))


# -- gradient checkpointing ---------------------------------------------------------------------
def checkpoint(func: Callable[..., Any], inputs: Sequence[Any], params: Sequence[Any], flag: bool) -> Any:
    """``func(*inputs)``; with `flag`, without keeping its activations: `CheckpointFunction`
    recomputes them in backward (less memory, one more forward). `params`: tensors `func` uses
    without taking them as arguments (module parameters), so they get gradients too."""
    if not flag:
        return func(*inputs)
    inputs, params = tuple(inputs), tuple(params)
    return CheckpointFunction.apply(func, len(inputs), *inputs, *params)


class CheckpointFunction(torch.autograd.Function):
    """Gradient checkpointing as a custom autograd function.

    forward(ctx, run_function, length, *args): args = `length` inputs then the parameters; runs
    ``run_function(*inputs)`` under no_grad and keeps only the inputs. backward recomputes the
    forward with grad enabled (under the same GPU autocast state as the forward) and returns the
    gradients of the inputs and the parameters.
    """

    @staticmethod
    def forward(ctx: Any, run_function: Callable[..., Any], length: int, *args: Any) -> Any:
        ctx.run_function = run_function
        ctx.input_tensors = list(args[:length])
        ctx.input_params = list(args[length:])
        ctx.gpu_autocast_kwargs = {
            "enabled": torch.is_autocast_enabled("cuda"),
            "dtype": torch.get_autocast_dtype("cuda"),
            "cache_enabled": torch.is_autocast_cache_enabled(),
        }
        with torch.no_grad():
            return ctx.run_function(*ctx.input_tensors)

    @staticmethod
    def backward(ctx: Any, *output_grads: Any) -> tuple[Any, ...]:
        inputs = [x.detach().requires_grad_(x.requires_grad or x.is_floating_point())
                  if isinstance(x, torch.Tensor) else x for x in ctx.input_tensors]
        autocast = (torch.autocast("cuda", **ctx.gpu_autocast_kwargs) if ctx.gpu_autocast_kwargs["enabled"]
                    else contextlib.nullcontext())
        with torch.enable_grad(), autocast:
            # shallow copies: run_function may modify its inputs in place (detached leaves forbid that)
            copies = [x.view_as(x) if isinstance(x, torch.Tensor) else x for x in inputs]
            outputs = ctx.run_function(*copies)
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        wrt = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
        wrt += [p for p in ctx.input_params if isinstance(p, torch.Tensor) and p.requires_grad]
        pairs = [(o, g) for o, g in zip(outputs, output_grads) if isinstance(o, torch.Tensor) and o.requires_grad]
        grads = iter(torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True)
                     if pairs and wrt else [None] * len(wrt))
        result = []
        for x in list(inputs) + list(ctx.input_params):
            result.append(next(grads) if isinstance(x, torch.Tensor) and x.requires_grad else None)
        del ctx.input_tensors, ctx.input_params, ctx.run_function
        return (None, None, *result)


# -- embeddings and modules ---------------------------------------------------------------------
def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000,
                       repeat_only: bool = False) -> torch.Tensor:
    """Sinusoidal embeddings (N, dim) of N (possibly fractional) timesteps: [cos | sin] of
    t * exp(-ln(max_period) * i / half), i < half = dim // 2, zero-padded for odd `dim`.
    repeat_only: the timesteps repeated `dim` times instead."""
    dim = _positive_int("dim", dim)
    if timesteps.dim() != 1:
        raise ValueError(f"timesteps: expected a 1-D tensor of N timesteps, got shape {list(timesteps.shape)}")
    if repeat_only:
        return timesteps[:, None].expand(-1, dim).clone()
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
                      / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of `module` in place; return it."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def scale_module(module: nn.Module, scale: float) -> nn.Module:
    """Multiply every parameter of `module` by `scale` in place; return it."""
    for p in module.parameters():
        p.detach().mul_(scale)
    return module


def mean_flat(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first (batch)."""
    if tensor.dim() < 2:
        raise ValueError(f"tensor: expected at least 2 dimensions (batch, ...), got {tensor.dim()}")
    return tensor.mean(dim=list(range(1, tensor.dim())))


def avg_pool_nd(dims: int, *args: Any, **kwargs: Any) -> nn.Module:
    """nn.AvgPool1d / 2d / 3d for `dims` 1 / 2 / 3 (other arguments passed on)."""
    pools = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
    if dims not in pools or isinstance(dims, bool):
        raise ValueError(f"dims: unsupported dimensions: expected 1, 2 or 3, got {dims!r}")
    return pools[dims](*args, **kwargs)


def noise_like(shape: Sequence[int], device: Any, repeat: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise of `shape`; repeat=True draws one sample and repeats it over the batch."""
    shape = tuple(shape)
    if not shape:
        raise ValueError("shape: expected at least one dimension (batch, ...)")
    if repeat:
        one = torch.randn((1, *shape[1:]), device=device, generator=generator)
        return one.repeat(shape[0], *((1,) * (len(shape) - 1)))
    return torch.randn(shape, device=device, generator=generator)


class AlphaBlender(nn.Module):
    """Blends spatial and temporal features: ``alpha * x_spatial + (1 - alpha) * x_temporal``.

    merge_strategy: "fixed" (alpha = `alpha`, a buffer ``mix_factor``), "learned" (alpha =
    sigmoid(mix_factor), a parameter initialised to `alpha`), "learned_with_images" (as learned,
    but alpha = 1 where ``image_only_indicator`` (b, t) is set, then rearranged with
    `rearrange_pattern`, default "b t -> (b t) 1 1").
    """

    strategies = MERGE_STRATEGIES

    def __init__(self, alpha: float, merge_strategy: str = "learned_with_images",
                 rearrange_pattern: str = "b t -> (b t) 1 1") -> None:
        super().__init__()
        if merge_strategy not in self.strategies:
            raise ValueError(f"merge_strategy: expected one of {list(self.strategies)}, got {merge_strategy!r}")
        self.merge_strategy = merge_strategy
        self.rearrange_pattern = rearrange_pattern
        value = torch.tensor([float(alpha)])
        if merge_strategy == "fixed":
            self.register_buffer("mix_factor", value)
        else:
            self.register_parameter("mix_factor", nn.Parameter(value))

    def get_alpha(self, image_only_indicator: torch.Tensor | None = None) -> torch.Tensor:
        """The blending factor (see the class docstring)."""
        if self.merge_strategy == "fixed":
            return self.mix_factor.to(image_only_indicator.device) if image_only_indicator is not None \
                else self.mix_factor
        if self.merge_strategy == "learned":
            return torch.sigmoid(self.mix_factor)
        if self.merge_strategy == "learned_with_images":
            if image_only_indicator is None:
                raise ValueError("image_only_indicator: required by merge_strategy 'learned_with_images' "
                                 "(a (batch, frames) tensor, nonzero for image-only frames)")
            from einops import rearrange

            alpha = torch.where(image_only_indicator.bool(),
                                torch.ones(1, 1, device=image_only_indicator.device),
                                torch.sigmoid(self.mix_factor)[..., None])
            return rearrange(alpha, self.rearrange_pattern)
        raise NotImplementedError(f"merge_strategy {self.merge_strategy!r}")

    def forward(self, x_spatial: torch.Tensor, x_temporal: torch.Tensor,
                image_only_indicator: torch.Tensor | None = None) -> torch.Tensor:
        alpha = self.get_alpha(image_only_indicator).to(x_spatial.dtype)
        return alpha * x_spatial + (1.0 - alpha) * x_temporal


def instantiate_from_config(config: Any) -> Any:
    """An object from ``{"target": "package.module.Name", "params": {...}}``; an nn.Module or a
    callable is returned as is. Configs are code-level settings: never feed untrusted files here."""
    if isinstance(config, nn.Module) or (callable(config) and not isinstance(config, Mapping)):
        return config
    if not isinstance(config, Mapping) or "target" not in config:
        raise ValueError(f"config: expected a mapping with a 'target' dotted path (and optional 'params'), "
                         f"got {config!r}")
    module_name, _, attr = str(config["target"]).rpartition(".")
    if not module_name:
        raise ValueError(f"config['target']: expected 'package.module.Name', got {config['target']!r}")
    cls = getattr(importlib.import_module(module_name), attr)
    return cls(**dict(config.get("params", {}) or {}))


class HybridConditioner(nn.Module):
    """Two conditioners: one for the concatenated conditioning, one for cross-attention.

    forward(c_concat, c_crossattn) -> {"c_concat": [concat(c_concat)], "c_crossattn": [crossattn(c_crossattn)]}.
    The configs are `instantiate_from_config` mappings (or modules).
    """

    def __init__(self, c_concat_config: Any, c_crossattn_config: Any) -> None:
        super().__init__()
        self.concat_conditioner = instantiate_from_config(c_concat_config)
        self.crossattn_conditioner = instantiate_from_config(c_crossattn_config)

    def forward(self, c_concat: Any, c_crossattn: Any) -> dict[str, list[Any]]:
        return {"c_concat": [self.concat_conditioner(c_concat)],
                "c_crossattn": [self.crossattn_conditioner(c_crossattn)]}


__all__ = ["AlphaBlender", "CheckpointFunction", "HybridConditioner", "avg_pool_nd", "betas_for_alpha_bar",
           "checkpoint", "extract_into_tensor", "make_beta_schedule", "make_ddim_sampling_parameters",
           "make_ddim_timesteps", "mean_flat", "noise_like", "scale_module", "timestep_embedding",
           "zero_module"]
