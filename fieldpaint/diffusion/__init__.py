"""Diffusion maths: noise schedules and x_0/ε/v conversions (`schedule`), the training loss (`loss`)."""

from fieldpaint.diffusion.loss import diffusion_loss, masked_mse
from fieldpaint.diffusion.schedule import (Schedule, cosine_alphas_cumprod, cosine_betas, eps_from_v,
                                           eps_from_x0, linear_betas, make_schedule,
                                           posterior_mean_variance, predict_x0_eps, q_sample, v_target,
                                           x0_from_eps, x0_from_v)

__all__ = [
    "Schedule", "cosine_alphas_cumprod", "cosine_betas", "diffusion_loss", "eps_from_v", "eps_from_x0",
    "linear_betas", "make_schedule", "masked_mse", "posterior_mean_variance", "predict_x0_eps",
    "q_sample", "v_target", "x0_from_eps", "x0_from_v",
]
