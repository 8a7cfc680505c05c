"""DDPM maths as pure functions: schedules, forward noising and loss, reverse steps, samplers.

Conventions: timesteps t are integers in [0, T); the network sees only t / T. Nothing in this
package holds state or knows of optimisers, runs or CLIP loading. Context handling lives in
`diffusion.conditioning`, the jitted grid sampler in `diffusion.grid`.
"""
from clip_ddpm.diffusion.forward import eps_loss, q_sample
from clip_ddpm.diffusion.samplers import (
    SAMPLERS,
    EpsFn,
    ddim_step,
    ddpm_posterior_mean,
    ddpm_step,
    guided_eps,
    guided_prediction,
    predicted_x0,
    sample,
    sampling_timesteps,
)
from clip_ddpm.diffusion.schedules import SCHEDULES, Schedule, make_schedule

__all__ = ["SAMPLERS", "SCHEDULES", "EpsFn", "Schedule", "ddim_step", "ddpm_posterior_mean", "ddpm_step",
           "eps_loss", "guided_eps", "guided_prediction", "make_schedule", "predicted_x0", "q_sample", "sample",
           "sampling_timesteps"]
