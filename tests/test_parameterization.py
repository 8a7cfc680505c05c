"""Reading a network output as ε, x0 or v: checked against the forward process in closed form."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip_ddpm import diffusion
from clip_ddpm.ddpm.step import StepConfig, jit_train_step, make_train_step, step_randomness
from clip_ddpm.diffusion import make_schedule
from clip_ddpm.diffusion.parameterization import eps_from_output
from clip_ddpm.models.unet import UNet
from clip_ddpm.training import parallel
from clip_ddpm.training.train_state import OptimizerSettings, create_train_state, make_optimizer


def _output_target(schedule, x0, t, eps, prediction):
    """What a perfect network outputs for (x0, t, ε), written out from the definitions:
    ε itself, x0 itself, or v = sqrt(ᾱ_t)·ε − sqrt(1 − ᾱ_t)·x0 (Salimans & Ho 2022)."""
    abar = np.asarray(schedule.alphas_cumprod)[np.asarray(t)][:, None, None, None]
    x0, eps = np.asarray(x0, np.float64), np.asarray(eps, np.float64)
    return {"eps": eps, "x0": x0, "v": np.sqrt(abar) * eps - np.sqrt(1 - abar) * x0}[prediction].astype(np.float32)


def _example():
    schedule = make_schedule("linear", 50)
    k0, k1 = jax.random.split(jax.random.key(0))
    x0 = jax.random.uniform(k0, (4, 3, 3, 2), minval=-1, maxval=1)
    eps = jax.random.normal(k1, x0.shape)
    t = jnp.array([0, 7, 30, 49])
    return schedule, x0, eps, t, diffusion.q_sample(schedule, x0, t, eps)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_the_exact_output_implies_the_true_noise(prediction):
    schedule, x0, eps, t, x_t = _example()
    target = _output_target(schedule, x0, t, eps, prediction)
    np.testing.assert_allclose(eps_from_output(schedule, x_t, t, target, prediction), eps, rtol=2e-4, atol=2e-4)


def test_x0_output_error_is_scaled_by_sqrt_snr_in_eps():
    """An x0 error δ is an ε error of sqrt(ᾱ/(1−ᾱ))·δ: the ε loss weighs x0 errors by the SNR."""
    schedule, x0, eps, t, x_t = _example()
    delta = 0.01
    implied = eps_from_output(schedule, x_t, t, x0 + delta, "x0")
    abar = np.asarray(schedule.alphas_cumprod)[np.asarray(t)]
    np.testing.assert_allclose(np.asarray(eps - implied)[:, 0, 0, 0], delta * np.sqrt(abar / (1 - abar)), rtol=1e-3)


def test_unknown_prediction_is_refused():
    schedule, x0, eps, t, x_t = _example()
    with pytest.raises(ValueError, match="unknown prediction"):
        eps_from_output(schedule, x_t, t, x0, "score")


def _ideal_output_for_point_mass(x0, schedule, prediction):
    """The exact network, in the given parameterisation, when all data is the single image x0."""
    def output_fn(x_t, t_frac, context):
        t = jnp.round(t_frac * schedule.num_timesteps).astype(jnp.int32)
        abar = schedule.alphas_cumprod[t][:, None, None, None]
        eps = (x_t - jnp.sqrt(abar) * x0) / jnp.sqrt(1 - abar)
        return {"eps": eps, "x0": jnp.broadcast_to(x0, x_t.shape),
                "v": jnp.sqrt(abar) * eps - jnp.sqrt(1 - abar) * x0}[prediction]
    return output_fn


@pytest.mark.parametrize("prediction", ["x0", "v"])
@pytest.mark.parametrize("sampler,steps", [("ddpm", None), ("ddim", 20)])
def test_samplers_read_x0_and_v_outputs(prediction, sampler, steps):
    schedule = make_schedule("linear", 100)
    x0 = jnp.linspace(-0.9, 0.9, 2 * 4 * 4 * 3).reshape(2, 4, 4, 3)
    fn = _ideal_output_for_point_mass(x0, schedule, prediction)
    out = jax.jit(lambda k: diffusion.sample(fn, schedule, k, x0.shape, sampler=sampler, steps=steps,
                                             prediction=prediction))(jax.random.key(0))
    np.testing.assert_allclose(out, x0, atol=1e-3)
    if prediction == "v":  # near t = 0, v is nearly ε, so misreading it would go unseen here
        return
    # Read as ε, the same outputs draw something else: the argument is what makes this work.
    wrong = jax.jit(lambda k: diffusion.sample(fn, schedule, k, x0.shape, sampler=sampler, steps=steps))(
        jax.random.key(0))
    assert float(jnp.max(jnp.abs(wrong - x0))) > 0.1


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_train_step_loss_is_the_eps_loss_of_the_implied_eps(prediction):
    """The step's reported loss, against the loss computed by hand from the same draws."""
    mesh = parallel.make_mesh(jax.devices()[:1])
    model = UNet(down_chs=(32, 32, 32), context_dim=0)
    schedule = make_schedule("linear", 20)
    images = jax.random.uniform(jax.random.key(3), (4, 8, 8, 3), minval=-1, maxval=1)
    params = model.init(jax.random.key(0), images, jnp.zeros((4,)))
    settings = OptimizerSettings.create(1e-3, 10, 0, 0.0, 0.0)
    state = create_train_state(jax.tree_util.tree_map(jnp.copy, params), make_optimizer(settings))  # donated
    step = jit_train_step(make_train_step(model, schedule, make_optimizer, StepConfig(prediction=prediction), mesh),
                          mesh)
    key = jax.random.key(7)
    _, metrics = step(state, {"image": images}, key, settings)

    t, eps, _ = step_randomness(key, jnp.asarray(0), images.shape, 20)
    x_t = diffusion.q_sample(schedule, images, t, eps)
    output = model.apply(params, x_t, t.astype(jnp.float32) / 20)
    abar = np.asarray(schedule.alphas_cumprod)[np.asarray(t)][:, None, None, None]
    implied = {"eps": output, "x0": (x_t - np.sqrt(abar) * output) / np.sqrt(1 - abar),
               "v": np.sqrt(abar) * output + np.sqrt(1 - abar) * x_t}[prediction]
    assert float(metrics["loss"]) == pytest.approx(float(np.mean((np.asarray(implied) - np.asarray(eps)) ** 2)),
                                                   rel=1e-4)
