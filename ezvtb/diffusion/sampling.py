"""The one denoising loop of the generative pipelines, over any diffusers scheduler and a denoiser
that is a torch module or a `GraphRunner` (an exported graph on a session): the same loop serves
both, so a pipeline's backend choice never changes its algorithm. Text-to-video runs it with
ModelScope's DDIM (`ezvtb.diffusion.schedulers.modelscope_ddim`), SV3D/SVD and SV4D with EDM Euler
(`edm_euler`); classifier-free guidance wraps the denoiser (`ezvtb.diffusion.guidance.guided_model`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def make_generator(seed: int | None = None, generator: Any = None, device: Any = "cpu") -> Any:
    """A torch.Generator: `generator` itself, or a new one seeded with `seed` (None: a random seed)."""
    import torch

    if generator is not None:
        if seed is not None:
            raise ValueError("seed: give either seed or generator, not both")
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
        return generator
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed: expected an int or None, got {seed!r}")
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def initial_noise(shape: Sequence[int], *, seed: int | None = None, generator: Any = None,
                  dtype: Any = None, device: Any = "cpu") -> Any:
    """Standard normal latents of `shape` drawn on the CPU from the seeded generator (identical on
    every backend and device for a seed), then moved to `device`."""
    import torch

    g = make_generator(seed, generator)
    return torch.randn(tuple(shape), generator=g, dtype=torch.float32).to(device=device,
                                                                          dtype=dtype or torch.float32)


def denoise(scheduler: Any, model_fn: Callable[[Any, Any], Any], latents: Any, num_inference_steps: int, *,
            generator: Any = None, seed: int | None = None, progress: bool = False, scale_noise: bool = True,
            timesteps: Sequence[Any] | None = None, callback: Callable[[int, Any, Any], None] | None = None,
            desc: str = "denoising", **step_kwargs: Any) -> Any:
    """Run `scheduler` from `latents` for `num_inference_steps` steps and return the final sample.

    model_fn(scaled_x, t) -> model output (eps, v, ... as the scheduler expects; wrap the network
    with `ezvtb.diffusion.guidance.guided_model` for CFG). latents: standard normal noise, multiplied
    by ``scheduler.init_noise_sigma`` when `scale_noise` (set False for a partially noised start,
    as img2img / video2video). timesteps: a subset of ``scheduler.timesteps`` to run (for example
    the tail for a strength < 1 start). Step noise (DDIM eta > 0) comes from the seeded generator.
    progress: a tqdm bar (titled `desc`) over the steps. callback(i, t, x) after each step.
    """
    from tqdm import tqdm

    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps: expected an int >= 1, got {num_inference_steps!r}")
    g = make_generator(seed, generator)
    scheduler.set_timesteps(num_inference_steps)
    steps = list(scheduler.timesteps if timesteps is None else timesteps)
    x = latents * scheduler.init_noise_sigma if scale_noise else latents
    accepts_generator = "generator" in _step_params(scheduler)
    if timesteps is not None and hasattr(scheduler, "set_begin_index"):
        all_t = [float(t) for t in scheduler.timesteps]
        first = float(steps[0])
        if first not in all_t:
            raise ValueError(f"timesteps: {first} is not one of the scheduler's timesteps")
        scheduler.set_begin_index(all_t.index(first))
    for i, t in enumerate(tqdm(steps, desc=desc, unit="step", disable=not progress, leave=False)):
        inp = scheduler.scale_model_input(x, t)
        out = model_fn(inp, t)
        kw = dict(step_kwargs)
        if accepts_generator:
            kw["generator"] = g
        x = scheduler.step(out, t, x, return_dict=False, **kw)[0]
        if callback is not None:
            callback(i, t, x)
    return x


def _step_params(scheduler: Any) -> set[str]:
    import inspect

    return set(inspect.signature(scheduler.step).parameters)


__all__ = ["denoise", "initial_noise", "make_generator"]
