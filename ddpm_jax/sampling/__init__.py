"""Sampling: every sampler in one ``lax.scan`` (``sample``), and each sampler's single step.

    sampler.py    ``sample``, ``SAMPLERS`` (``DETERMINISTIC_SAMPLERS``), ``Trajectory``,
                  ``model_calls``, ``default_spacing``
    steps.py      ``ddim_step``, ``dpmpp_2m_step``, ``dpmpp_2m_sde_step``, ``heun_step`` (pure,
                  for your own loops; ancestral DDPM's step is ``diffusion.p_sample_step``)
    timesteps.py  ``sampling_timesteps`` and its ``SPACINGS``: which trained timesteps are visited
    guidance.py   ``classifier_free_guidance``
    editing.py    ``inpaint`` (RePaint), ``sdedit``, ``ddim_invert``, ``slerp``
"""

from ddpm_jax.sampling.editing import ddim_invert, inpaint, sdedit, slerp
from ddpm_jax.sampling.guidance import classifier_free_guidance
from ddpm_jax.sampling.sampler import (DETERMINISTIC_SAMPLERS, SAMPLERS, Trajectory,
                                      default_spacing, model_calls, sample)
from ddpm_jax.sampling.steps import ddim_step, dpmpp_2m_sde_step, dpmpp_2m_step, heun_step
from ddpm_jax.sampling.timesteps import SPACINGS, sampling_timesteps

__all__ = ["DETERMINISTIC_SAMPLERS", "SAMPLERS", "SPACINGS", "Trajectory",
           "classifier_free_guidance", "ddim_invert", "ddim_step", "default_spacing",
           "dpmpp_2m_sde_step", "dpmpp_2m_step", "heun_step", "inpaint", "model_calls", "sample",
           "sampling_timesteps", "sdedit", "slerp"]
