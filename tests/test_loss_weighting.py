"""Min-SNR-γ weighting of the ε loss, against values worked out by hand."""
import jax.numpy as jnp
import numpy as np
import pytest

from clip_ddpm.diffusion import make_schedule
from clip_ddpm.diffusion.forward import eps_loss, loss_weights, snr


def test_min_snr_weights_are_min_snr_gamma_over_snr():
    schedule = make_schedule("linear", 4, beta_start=0.1, beta_end=0.4)
    # betas 0.1, 0.2, 0.3, 0.4 -> abar 0.9, 0.72, 0.504, 0.3024; SNR = abar / (1 - abar).
    t = jnp.array([0, 1, 2, 3])
    expected_snr = np.array([9.0, 0.72 / 0.28, 0.504 / 0.496, 0.3024 / 0.6976])
    np.testing.assert_allclose(snr(schedule, t), expected_snr, rtol=1e-5)
    # gamma = 2: only t = 0 and 1 have SNR above it -> weights 2/9 and 2/(0.72/0.28); the rest 1.
    np.testing.assert_allclose(loss_weights(schedule, t, "min_snr", 2.0),
                               [2 / 9, 2 / (0.72 / 0.28), 1.0, 1.0], rtol=1e-5)
    assert loss_weights(schedule, t, "uniform") is None
    with pytest.raises(ValueError, match="unknown loss weighting"):
        loss_weights(schedule, t, "snr")


def test_weighted_eps_loss_weights_each_example_mean():
    eps = jnp.zeros((2, 2, 1, 1))
    eps_hat = jnp.array([[[[1.0]], [[3.0]]], [[[2.0]], [[0.0]]]])  # per-example MSE: 5 and 2
    assert float(eps_loss(eps_hat, eps)) == pytest.approx(3.5)
    assert float(eps_loss(eps_hat, eps, jnp.array([0.5, 1.0]))) == pytest.approx((0.5 * 5 + 2) / 2)


def test_clipped_snr_also_floors_the_x0_weight_at_one():
    schedule = make_schedule("linear", 4, beta_start=0.1, beta_end=0.4)
    t = jnp.array([0, 1, 2, 3])
    # SNR 9, 2.571, 1.016, 0.4335 (above); gamma 2: clip(SNR, 1, 2) / SNR -> 2/9, 2/2.571, 1, 1/0.4335.
    np.testing.assert_allclose(loss_weights(schedule, t, "clipped_snr", 2.0),
                               [2 / 9, 2 / (0.72 / 0.28), 1.0, 0.6976 / 0.3024], rtol=1e-5)
