"""Diffusion maths against closed forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip_ddpm import diffusion


@pytest.fixture
def schedule():
    return diffusion.make_schedule("linear", 400)


def test_linear_schedule_is_the_course_schedule(schedule):
    np.testing.assert_allclose(np.asarray(schedule.betas)[[0, -1]], [1e-4, 0.02], rtol=1e-6)
    np.testing.assert_allclose(schedule.alphas_cumprod, np.cumprod(1 - np.linspace(1e-4, 0.02, 400)), rtol=1e-5)


def test_cosine_schedule_decreases_to_near_zero():
    s = diffusion.make_schedule("cosine", 1000)
    abar = np.asarray(s.alphas_cumprod)
    assert np.all(np.diff(abar) < 0) and abar[0] > 0.999 and abar[-1] < 1e-3
    assert float(jnp.max(s.betas)) <= 0.999 + 1e-6


def test_q_sample_equals_iterating_the_forward_process(schedule):
    """Statistics of t+1 single forward steps match the closed form's mean and variance."""
    t = 150
    x0 = jnp.linspace(-1, 1, 8)
    n = 20000
    keys = jax.random.split(jax.random.key(0), t + 1)
    x = jnp.broadcast_to(x0, (n, 8))
    for s in range(t + 1):
        beta = schedule.betas[s]
        x = jnp.sqrt(1 - beta) * x + jnp.sqrt(beta) * jax.random.normal(keys[s], x.shape)
    closed = diffusion.q_sample(schedule, jnp.broadcast_to(x0, (n, 8)), jnp.full((n,), t),
                                jax.random.normal(jax.random.key(1), (n, 8)))
    abar = float(schedule.alphas_cumprod[t])
    np.testing.assert_allclose(x.mean(0), np.sqrt(abar) * x0, atol=0.03)
    np.testing.assert_allclose(closed.mean(0), np.sqrt(abar) * x0, atol=0.03)
    np.testing.assert_allclose(x.var(0), 1 - abar, rtol=0.05)
    np.testing.assert_allclose(closed.var(0), 1 - abar, rtol=0.05)


def test_reverse_step_with_true_noise_gives_the_posterior_mean(schedule):
    """μ(x_t, ε) equals the closed-form mean of q(x_{t-1} | x_t, x_0)."""
    key = jax.random.key(2)
    x0 = jax.random.uniform(key, (5, 4, 4, 3), minval=-1, maxval=1)
    eps = jax.random.normal(jax.random.key(3), x0.shape)
    t = jnp.array([1, 10, 100, 250, 399])
    x_t = diffusion.q_sample(schedule, x0, t, eps)
    b, a, abar = (np.asarray(v)[np.asarray(t)][:, None, None, None]
                  for v in (schedule.betas, schedule.alphas, schedule.alphas_cumprod))
    abar_prev = np.asarray(schedule.alphas_cumprod, np.float64)[np.asarray(t) - 1][:, None, None, None]
    expected = (np.sqrt(abar_prev) * b / (1 - abar)) * x0 + (np.sqrt(a) * (1 - abar_prev) / (1 - abar)) * x_t
    got = diffusion.ddpm_posterior_mean(schedule, x_t, t, eps)
    np.testing.assert_allclose(got, expected, atol=1e-4)  # float32: at t=1, 1 - abar is 2e-4
    # The step adds sigma_t * noise, except at t = 0.
    noise = jnp.ones_like(x0)
    stepped = diffusion.ddpm_step(schedule, x_t, t, eps, noise)
    np.testing.assert_allclose(stepped - got, np.sqrt(b) * np.ones_like(x0), atol=2e-5)
    t0 = jnp.zeros((5,), jnp.int32)
    np.testing.assert_allclose(diffusion.ddpm_step(schedule, x_t, t0, eps, noise),
                               diffusion.ddpm_posterior_mean(schedule, x_t, t0, eps), atol=1e-6)


def test_guidance_zero_is_the_conditional_prediction():
    cond, uncond = jnp.full((2, 3), 2.0), jnp.full((2, 3), -1.0)
    np.testing.assert_array_equal(diffusion.guided_eps(cond, uncond, 0.0), cond)
    np.testing.assert_allclose(diffusion.guided_eps(cond, uncond, jnp.array([1.0, 2.0])),
                               [[5.0] * 3, [8.0] * 3])


def test_guided_prediction_uses_one_batched_call_equal_to_two_calls():
    calls = []

    def eps_fn(x, t_frac, c):
        calls.append(x.shape[0])
        return x * (1 + t_frac[:, None, None, None]) + c.sum(-1)[:, None, None, None]

    x = jax.random.normal(jax.random.key(0), (3, 2, 2, 1))
    c = jnp.array([[1.0, 2.0], [0.5, 0.0], [3.0, 1.0]])
    t = jnp.array([4, 5, 6])
    w = jnp.array([0.0, 1.0, 3.0])
    got = diffusion.guided_prediction(eps_fn, x, t, c, w, 10)
    assert calls == [6]
    cond = eps_fn(x, t / 10, c)
    uncond = eps_fn(x, t / 10, jnp.zeros_like(c))
    np.testing.assert_allclose(got, diffusion.guided_eps(cond, uncond, w), atol=1e-6)


def _ideal_eps_for_point_mass(x0, schedule):
    """The exact noise predictor when all data is the single image x0."""
    def eps_fn(x_t, t_frac, context):
        t = jnp.round(t_frac * schedule.num_timesteps).astype(jnp.int32)
        abar = schedule.alphas_cumprod[t][:, None, None, None]
        return (x_t - jnp.sqrt(abar) * x0) / jnp.sqrt(1 - abar)
    return eps_fn


@pytest.mark.parametrize("sampler,steps", [("ddpm", None), ("ddim", 20)])
def test_samplers_recover_a_point_mass_with_the_ideal_predictor(schedule, sampler, steps):
    x0 = jnp.linspace(-0.9, 0.9, 2 * 4 * 4 * 3).reshape(2, 4, 4, 3)
    out = jax.jit(lambda k: diffusion.sample(_ideal_eps_for_point_mass(x0, schedule), schedule, k,
                                             x0.shape, sampler=sampler, steps=steps))(jax.random.key(0))
    np.testing.assert_allclose(out, x0, atol=1e-3)
