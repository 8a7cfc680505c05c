"""The samplers against answers that could be wrong: Gaussian data with its exact noise predictor.

For data x0 ~ N(μ, s²) (independently per pixel), x_t ~ N(sqrt(ᾱ_t) μ, ᾱ_t s² + 1 − ᾱ_t) and the
ideal ε-predictor E[ε | x_t] and x0-estimate E[x0 | x_t] are linear in x_t. Every sampler step is
then affine in x_t plus Gaussian noise, so the law of the samples is Gaussian with a mean and
variance computed here in float64, step by step, from the papers' formulas in their x0 form
(Ho et al. 2020 eq. 7, Song et al. 2021 eq. 12), not from the code's ε form. Two claims:

1. the samplers' samples have that mean and variance within a stated statistical tolerance
   (5 standard errors, 4096 samples of 48 pixels each);
2. that law is close to N(μ, s²): within 1% of s in the mean and 2% in the variance for DDPM
   with all T steps. DDIM with 50 steps is a coarse discretisation: even with the exact
   predictor it loses 5-21% of the variance here (each step replaces the posterior of x0 by its
   mean; more for narrower data and for eta = 1), and on the linear schedule its deterministic
   ODE keeps the prior mismatch of x_T ~ N(0, I) where the data's x_T has mean sqrt(ᾱ_T) μ
   (ᾱ_T = 0.018): up to 7% of s in the mean. The bounds below state these.

A sampler with one wrong coefficient (half the ε coefficient of the DDPM mean, β for sqrt(β)
as the DDPM noise scale, ᾱ_t for ᾱ_prev in DDIM's direction term, or DDIM's σ without its
second factor) fails claim 1.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip_ddpm import diffusion

N = 4096
PIXEL_SHAPE = (4, 4, 3)
MU = np.linspace(-0.5, 0.5, 48).reshape(PIXEL_SHAPE)
S = np.linspace(0.3, 0.8, 48)[::-1].reshape(PIXEL_SHAPE)


def _constants(schedule):
    return (np.asarray(schedule.betas, np.float64), np.asarray(schedule.alphas, np.float64),
            np.asarray(schedule.alphas_cumprod, np.float64))


def gaussian_eps_fn(schedule, mu, s, context_mean=False):
    """The exact ε-predictor E[ε | x_t] for x0 ~ N(μ, s²) per pixel (float32, inside the sampler).

    With context_mean, the data mean is μ + context (context [B, H*W*C]): the zero context of the
    unconditional half of guidance then predicts for N(μ, s²).
    """
    mu, s = jnp.asarray(mu, jnp.float32), jnp.asarray(s, jnp.float32)

    def eps_fn(x_t, t_frac, context):
        t = jnp.round(t_frac * schedule.num_timesteps).astype(jnp.int32)
        abar = schedule.alphas_cumprod[t].reshape((-1,) + (1,) * (x_t.ndim - 1))
        mean = mu + (context.reshape(x_t.shape) if context_mean else 0.0)
        return jnp.sqrt(1 - abar) * (x_t - jnp.sqrt(abar) * mean) / (abar * s ** 2 + 1 - abar)

    return eps_fn


def sampler_law(schedule, mu, s, timesteps, sampler, eta=0.0):
    """Mean and variance (float64) of what a sampler visiting `timesteps` returns for N(μ, s²) data
    with the exact predictor, starting from x ~ N(0, 1)."""
    betas, alphas, abar = _constants(schedule)
    mean, var = np.zeros_like(mu), np.ones_like(mu)
    for i, t in enumerate(timesteps):
        # The exact estimate of x0 is the Gaussian posterior mean: x0_hat = mu + g (x - sqrt(abar) mu).
        g = np.sqrt(abar[t]) * s ** 2 / (abar[t] * s ** 2 + 1 - abar[t])
        x0_gain, x0_shift = g, mu - g * np.sqrt(abar[t]) * mu  # x0_hat = x0_gain x + x0_shift
        if sampler == "ddpm":  # Ho et al. eq. 7, sigma_t^2 = beta_t, no noise at t = 0
            abar_prev = abar[t - 1] if t > 0 else 1.0
            c_x0 = np.sqrt(abar_prev) * betas[t] / (1 - abar[t])
            c_xt = np.sqrt(alphas[t]) * (1 - abar_prev) / (1 - abar[t])
            gain, shift = c_x0 * x0_gain + c_xt, c_x0 * x0_shift
            noise_var = betas[t] if t > 0 else 0.0
        else:  # Song et al. eq. 12 towards the next visited timestep (or x0)
            abar_prev = abar[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0
            sigma2 = eta ** 2 * (1 - abar_prev) / (1 - abar[t]) * (1 - abar[t] / abar_prev)
            d = np.sqrt(1 - abar_prev - sigma2) / np.sqrt(1 - abar[t])  # times eps_hat's numerator
            gain = np.sqrt(abar_prev) * x0_gain + d * (1 - np.sqrt(abar[t]) * x0_gain)
            shift = np.sqrt(abar_prev) * x0_shift - d * np.sqrt(abar[t]) * x0_shift
            noise_var = sigma2
        mean, var = gain * mean + shift, gain ** 2 * var + noise_var
    return mean, var


# The suite compiles without XLA's backend optimisation (conftest.py), which suits programs that
# run a few times; a sampler here runs up to 400 steps over 4096 x 48 numbers, about 4x faster
# optimised (DDPM-400: 10 s -> 2.6 s to run, compiling in the same half second).
OPTIMISED = {"xla_backend_optimization_level": 1}


def run_sampler(schedule, eps_fn, sampler, steps=None, eta=0.0, n=N, contexts=None, guidance=0.0, seed=0,
                clip_denoised=False):
    fn = jax.jit(lambda key, c, w: diffusion.sample(eps_fn, schedule, key, (n,) + PIXEL_SHAPE, c, w, sampler,
                                                    steps, eta, clip_denoised), compiler_options=OPTIMISED)
    return np.asarray(fn(jax.random.key(seed), contexts, guidance), np.float64)


def assert_matches_law(samples, mean, var, n_sigma=5.0):
    """Per pixel and pooled over pixels, the sample mean and variance equal `mean`, `var` within
    n_sigma standard errors (se of a mean: sqrt(var / n); of a variance: var sqrt(2 / n))."""
    n = samples.shape[0]
    z = (samples - mean) / np.sqrt(var)
    pooled = z.size
    assert abs(z.mean()) < n_sigma / np.sqrt(pooled), z.mean()
    assert abs(z.var() - 1) < n_sigma * np.sqrt(2 / pooled), z.var()
    np.testing.assert_array_less(np.abs(z.mean(0)), n_sigma / np.sqrt(n))
    np.testing.assert_array_less(np.abs(z.var(0) - 1), n_sigma * np.sqrt(2 / n))


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("sampler,steps,eta,mean_bias,var_bias", [
    ("ddpm", None, 0.0, 0.01, 0.02),
    ("ddim", 50, 0.0, 0.07, 0.10),
    ("ddim", 50, 1.0, 0.01, 0.22),
])
def test_gaussian_data_is_sampled_with_the_right_mean_and_variance(kind, sampler, steps, eta, mean_bias,
                                                                   var_bias):
    schedule = diffusion.make_schedule(kind, 400)
    timesteps = diffusion.sampling_timesteps(400, sampler, steps)
    mean, var = sampler_law(schedule, MU, S, timesteps, sampler, eta)
    # Claim 2: the law is N(mu, s^2) up to the stated discretisation bias (relative to s and s^2).
    np.testing.assert_array_less(np.abs(mean - MU) / S, mean_bias)
    np.testing.assert_array_less(np.abs(var / S ** 2 - 1), var_bias)
    # Claim 1: the sampler draws from that law.
    samples = run_sampler(schedule, gaussian_eps_fn(schedule, MU, S), sampler, steps, eta)
    assert_matches_law(samples, mean, var)


def test_ddim_timesteps_run_from_pure_noise_to_zero_evenly():
    for steps in (1, 2, 5, 50, 400):
        ts = diffusion.sampling_timesteps(400, "ddim", steps)
        assert ts[0] == 399 and len(ts) == steps and ts == sorted(ts, reverse=True)
        if steps > 1:
            assert ts[-1] == 0 and max(np.diff(ts)) - min(np.diff(ts)) <= 1
    assert diffusion.sampling_timesteps(400, "ddim", 5) == [399, 299, 200, 100, 0]
    assert diffusion.sampling_timesteps(4, "ddpm", None) == [3, 2, 1, 0]
    with pytest.raises(ValueError):
        diffusion.sampling_timesteps(400, "ddim", 401)


def test_one_ddim_step_goes_from_pure_noise_to_the_posterior_mean():
    """With one step, DDIM returns E[x0 | x_{T-1}] = mu + g (x - sqrt(abar) mu) of the noise x:
    almost the data mean, with a variance g^2 far below s^2 (the mean of a wide posterior). A
    sampler that took the noise for a nearly clean image (t = 0) would return the noise."""
    schedule = diffusion.make_schedule("linear", 400)
    abar = float(schedule.alphas_cumprod[-1])
    g = np.sqrt(abar) * S ** 2 / (abar * S ** 2 + 1 - abar)
    samples = run_sampler(schedule, gaussian_eps_fn(schedule, MU, S), "ddim", 1)
    assert_matches_law(samples, MU - g * np.sqrt(abar) * MU, g ** 2)


@pytest.mark.parametrize("sampler,steps", [("ddpm", None), ("ddim", 50)])
def test_guided_sampling_of_a_batch_mixing_guidance_weights(sampler, steps):
    """ε_cond predicts for N(μ + c, s²), ε_uncond (zero context) for N(μ, s²). The guided
    (1 + w) ε_cond − w ε_uncond is then the exact predictor for N(μ + (1 + w) c, s²), so each
    sample, with its own w and c in one batch, follows that data's law."""
    schedule = diffusion.make_schedule("linear", 400)
    ws = np.array([0.0, 1.0, 2.5, 4.0])
    shifts = np.array([0.2, -0.1, 0.05, 0.1])
    per_group = 1024
    w = np.repeat(ws, per_group)
    c = np.repeat(shifts, per_group)[:, None] * np.ones((1, MU.size))
    s = np.full(PIXEL_SHAPE, 0.5)
    samples = run_sampler(schedule, gaussian_eps_fn(schedule, MU, s, context_mean=True), sampler, steps,
                          n=w.size, contexts=jnp.asarray(c, jnp.float32), guidance=jnp.asarray(w, jnp.float32))
    timesteps = diffusion.sampling_timesteps(400, sampler, steps)
    for g, (wg, shift) in enumerate(zip(ws, shifts)):
        mean, var = sampler_law(schedule, MU + (1 + wg) * shift, s, timesteps, sampler)
        assert_matches_law(samples[g * per_group:(g + 1) * per_group], mean, var)


def test_guided_prediction_is_the_guidance_formula_per_sample():
    """Known ε_cond and ε_uncond; each sample of the batch has its own w."""
    def eps_fn(x, t_frac, c):
        return 2.0 * x + t_frac[:, None, None, None] + c.sum(-1)[:, None, None, None]

    x = np.random.default_rng(0).normal(size=(3, 2, 2, 1)).astype(np.float32)
    c = np.array([[1.0, 2.0], [0.5, 0.0], [3.0, 1.0]], np.float32)
    t = np.array([4, 5, 6])
    w = np.array([0.0, 1.0, 3.0], np.float32)
    got = diffusion.guided_prediction(eps_fn, jnp.asarray(x), jnp.asarray(t), jnp.asarray(c), jnp.asarray(w), 10)
    for i in range(3):
        cond = 2.0 * x[i] + t[i] / 10 + c[i].sum()
        uncond = 2.0 * x[i] + t[i] / 10
        np.testing.assert_allclose(got[i], (1 + w[i]) * cond - w[i] * uncond, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- --clip_denoised

def _step_inputs(seed: int, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x_t (wide enough that the x0 estimate often leaves [-1, 1]), a predicted ε and fresh noise."""
    rng = np.random.default_rng(seed)
    x_t = rng.normal(size=(batch, 2, 2, 3)).astype(np.float32) * 2
    return x_t, rng.normal(size=x_t.shape).astype(np.float32), rng.normal(size=x_t.shape).astype(np.float32)


def test_clipped_ddpm_step_is_the_posterior_mean_of_the_clipped_estimate():
    schedule = diffusion.make_schedule("cosine", 100)
    betas, alphas, abar = _constants(schedule)
    x_t, eps, noise = _step_inputs(seed=1, batch=4)
    t = np.array([0, 1, 50, 99])
    got = diffusion.ddpm_step(schedule, jnp.asarray(x_t), jnp.asarray(t), jnp.asarray(eps),
                              jnp.asarray(noise), clip_denoised=True)
    for i, ti in enumerate(t):
        x0 = np.clip((x_t[i] - np.sqrt(1 - abar[ti]) * eps[i]) / np.sqrt(abar[ti]), -1, 1)
        abar_prev = abar[ti - 1] if ti > 0 else 1.0
        mean = (np.sqrt(abar_prev) * betas[ti] * x0 + np.sqrt(alphas[ti]) * (1 - abar_prev) * x_t[i]) / (1 - abar[ti])
        expected = mean + (np.sqrt(betas[ti]) * noise[i] if ti > 0 else 0.0)
        np.testing.assert_allclose(got[i], expected, rtol=2e-4, atol=2e-4)


def test_clipped_ddim_step_uses_the_clipped_estimate_and_its_noise():
    schedule = diffusion.make_schedule("linear", 100)
    _, _, abar = _constants(schedule)
    x_t, eps, noise = _step_inputs(seed=2, batch=3)
    t, t_prev = np.array([99, 50, 3]), np.array([60, 10, -1])
    got = diffusion.ddim_step(schedule, jnp.asarray(x_t), jnp.asarray(t), jnp.asarray(t_prev), jnp.asarray(eps),
                              jnp.asarray(noise), 0.5, clip_denoised=True)
    for i in range(3):
        a, a_prev = abar[t[i]], (abar[t_prev[i]] if t_prev[i] >= 0 else 1.0)
        x0 = np.clip((x_t[i] - np.sqrt(1 - a) * eps[i]) / np.sqrt(a), -1, 1)
        eps_clipped = (x_t[i] - np.sqrt(a) * x0) / np.sqrt(1 - a)
        sigma = 0.5 * np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        expected = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - sigma ** 2) * eps_clipped + sigma * noise[i]
        np.testing.assert_allclose(got[i], expected, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("sampler,steps", [("ddpm", None), ("ddim", 10)])
def test_clip_denoised_keeps_samples_in_the_data_range(sampler, steps):
    """Data that is one image with values beyond [-1, 1]: the exact predictor recovers it, unless
    the estimate of x0 is clipped, which returns the clipped image."""
    schedule = diffusion.make_schedule("cosine", 50)
    x0 = jnp.linspace(-1.6, 1.6, 2 * 4 * 4 * 3).reshape(2, 4, 4, 3)

    def eps_fn(x_t, t_frac, context):
        t = jnp.round(t_frac * schedule.num_timesteps).astype(jnp.int32)
        abar = schedule.alphas_cumprod[t][:, None, None, None]
        return (x_t - jnp.sqrt(abar) * x0) / jnp.sqrt(1 - abar)

    def draw(clip):
        return np.asarray(jax.jit(lambda k: diffusion.sample(eps_fn, schedule, k, x0.shape, sampler=sampler,
                                                             steps=steps, clip_denoised=clip))(jax.random.key(0)))

    np.testing.assert_allclose(draw(False), x0, atol=2e-3)
    np.testing.assert_allclose(draw(True), np.clip(x0, -1, 1), atol=2e-3)
