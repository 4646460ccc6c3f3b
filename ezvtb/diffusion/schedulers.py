"""Configured diffusers schedulers for the seeds' samplers, and the closed forms they implement.

* `modelscope_ddim`: ModelScope text-to-video / sd-video: DDIM over the "scaled_linear" betas
  (sqrt-spaced 0.00085 -> 0.012, 1000 steps), epsilon prediction, "leading" spacing with
  ``steps_offset=1`` (timesteps ``1 + arange(0, 1000, 1000 // S)`` reversed, the same as
  `ezvtb.diffusion.util.make_ddim_timesteps("uniform", S, 1000)`), ``set_alpha_to_one=False``
  (the last step goes to alphas_cumprod[0], as `make_ddim_sampling_parameters`). When S does not
  divide 1000, ModelScope runs ``len(range(0, 1000, 1000 // S))`` steps (for S = 7: 8 steps, 995
  ... 1) where diffusers' "leading" runs S (853 ... 1): `ModelScopeDDIMScheduler` keeps
  ModelScope's list (the step size, hence every update, is the same).
* `edm_euler`: SV3D / SVD: Euler on the EDM (Karras) discretisation `edm_sigmas` (sigma_min 0.002,
  sigma_max 700, rho 7, then 0), v-prediction with ``c_noise = 0.25 ln sigma`` (`v_scalings`),
  initial noise ``randn * sqrt(1 + sigma_0**2)``; s_churn 0, so the sampler is the deterministic
  Euler ODE.

The proofs that the configured schedulers compute these formulas step by step are in
``tests/test_diffusion_schedulers.py``.
"""
from __future__ import annotations

import math
from typing import Any

MODELSCOPE_BETA_START = 0.00085
MODELSCOPE_BETA_END = 0.012


def modelscope_ddim(num_train_timesteps: int = 1000) -> Any:
    """diffusers `DDIMScheduler` configured as ModelScope T2V's DDIM sampler (eta is a `step` argument).

    A `ModelScopeDDIMScheduler` (a DDIMScheduler whose `set_timesteps` gives ModelScope's list).
    """
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps: expected an int >= 2, got {num_train_timesteps!r}")
    return _modelscope_ddim_class()(num_train_timesteps=num_train_timesteps, beta_start=MODELSCOPE_BETA_START,
                         beta_end=MODELSCOPE_BETA_END, beta_schedule="scaled_linear", prediction_type="epsilon",
                         timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False, clip_sample=False,
                         thresholding=False)


def edm_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 700.0, rho: float = 7.0) -> Any:
    """EDM discretisation (Karras et al. 2022, eq. 5) with a final 0: float64 tensor (num_steps + 1,).

    sigma_i = (sigma_max^(1/rho) + i/(n-1) * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, i = 0..n-1.
    """
    import torch

    _check_edm(sigma_min, sigma_max, rho)
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps: expected an int >= 1, got {num_steps!r}")
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1, dtype=torch.float64)])


def v_scalings(sigma: Any) -> tuple[Any, Any, Any, Any]:
    """(c_skip, c_out, c_in, c_noise) of v-prediction with the EDM noise input (sgm's
    VScalingWithEDMcNoise): 1/(s^2+1), -s/sqrt(s^2+1), 1/sqrt(s^2+1), 0.25 ln s.
    denoised = c_skip * x + c_out * net(c_in * x, c_noise)."""
    import torch

    s = torch.as_tensor(sigma, dtype=torch.float64)
    return 1 / (s**2 + 1), -s / (s**2 + 1).sqrt(), 1 / (s**2 + 1).sqrt(), 0.25 * s.log()


def _check_edm(sigma_min: Any, sigma_max: Any, rho: Any) -> None:
    for name, v in (("sigma_min", sigma_min), ("sigma_max", sigma_max), ("rho", rho)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name}: expected a finite number > 0, got {v!r}")
    if sigma_min >= sigma_max:
        raise ValueError(f"sigma_min: expected < sigma_max ({sigma_max}), got {sigma_min}")


def edm_euler(sigma_min: float = 0.002, sigma_max: float = 700.0, rho: float = 7.0) -> Any:
    """diffusers `EulerDiscreteScheduler` on EDM sigmas with v-prediction and c_noise = 0.25 ln sigma.

    The configuration of diffusers' SVD pipeline: Karras sigmas between `sigma_min` and
    `sigma_max`, ``timestep_type="continuous"`` (timesteps = 0.25 ln sigma), "leading" spacing
    (init_noise_sigma = sqrt(sigma_max^2 + 1)), final sigma 0. diffusers fixes rho at 7; another
    `rho` gives a subclass whose Karras ramp uses it (not kept by ``save_config``).
    """
    from diffusers import EulerDiscreteScheduler

    _check_edm(sigma_min, sigma_max, rho)
    cls = EulerDiscreteScheduler if rho == 7.0 else _rho_euler_class()
    sched = cls(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="v_prediction", interpolation_type="linear", use_karras_sigmas=True,
                sigma_min=float(sigma_min), sigma_max=float(sigma_max), timestep_spacing="leading",
                timestep_type="continuous", steps_offset=1, final_sigmas_type="zero")
    if rho != 7.0:
        sched.rho = float(rho)
    return sched


_RHO_CLASS: Any = None
_MODELSCOPE_CLASS: Any = None


def _modelscope_ddim_class() -> Any:
    global _MODELSCOPE_CLASS
    if _MODELSCOPE_CLASS is None:
        import numpy as np
        import torch
        from diffusers import DDIMScheduler

        class ModelScopeDDIMScheduler(DDIMScheduler):
            """DDIMScheduler with ModelScope's timesteps ``(arange(0, T, T // S) + 1)[::-1]``, clamped to T - 1.

            Identical to "leading" + steps_offset 1 when S divides T; otherwise one or more extra
            final steps, as ModelScope / `make_ddim_timesteps("uniform")` run them. The step size
            ``T // S`` (DDIMScheduler's previous-timestep rule) is unchanged.
            """

            def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
                super().set_timesteps(num_inference_steps, device)
                t = self.config.num_train_timesteps
                steps = np.arange(0, t, t // self.num_inference_steps) + self.config.steps_offset
                steps = np.minimum(steps, t - 1)  # ModelScope clamps to T - 1 (only for S > T / 2)
                self.timesteps = torch.from_numpy(steps[::-1].copy().astype(np.int64)).to(device)

        _MODELSCOPE_CLASS = ModelScopeDDIMScheduler
    return _MODELSCOPE_CLASS


def _rho_euler_class() -> Any:
    global _RHO_CLASS
    if _RHO_CLASS is None:
        import numpy as np
        from diffusers import EulerDiscreteScheduler

        class RhoEulerDiscreteScheduler(EulerDiscreteScheduler):
            """EulerDiscreteScheduler whose Karras ramp uses `self.rho` instead of diffusers' fixed 7."""

            rho = 7.0

            def _convert_to_karras(self, in_sigmas: Any, num_inference_steps: int) -> Any:
                ramp = np.linspace(0, 1, num_inference_steps)
                lo = self.config.sigma_min ** (1 / self.rho)
                hi = self.config.sigma_max ** (1 / self.rho)
                return (hi + ramp * (lo - hi)) ** self.rho

        _RHO_CLASS = RhoEulerDiscreteScheduler
    return _RHO_CLASS


__all__ = ["edm_euler", "edm_sigmas", "modelscope_ddim", "v_scalings"]
