"""ddpm_jax: denoising diffusion probabilistic models (Ho et al. 2020) in JAX/Flax."""

from ddpm_jax.diffusion import (
    PMeanVariance,
    p_mean_variance,
    p_sample_step,
    predict_eps_from_v,
    predict_eps_from_x0,
    predict_x0_from_eps,
    predict_x0_from_v,
    q_mean_variance,
    q_posterior,
    q_sample,
    v_from_x0_eps,
)
from ddpm_jax.likelihood import ode_log_likelihood
from ddpm_jax.losses import (
    VariationalBound,
    discretized_gaussian_log_likelihood,
    draw_t_and_noise,
    min_snr_weight,
    normal_kl,
    prior_kl,
    training_loss,
    training_loss_given,
    variational_bound,
    vlb_term,
)
from ddpm_jax.sampling import (
    Trajectory,
    classifier_free_guidance,
    ddim_invert,
    ddim_step,
    dpmpp_2m_sde_step,
    dpmpp_2m_step,
    heun_step,
    inpaint,
    sample,
    sampling_timesteps,
    sdedit,
    slerp,
)
from ddpm_jax.schedules import Schedule, make_schedule, respace

__version__ = "0.1.0"
