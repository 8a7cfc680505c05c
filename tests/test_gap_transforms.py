"""The gap-closing context transforms (LAFITE noise, gap shift) against closed-form answers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip_ddpm.diffusion import conditioning


def _unit_rows(n, d, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_lafite_keeps_unit_length_and_moves_by_xi():
    h = jnp.asarray(_unit_rows(4000, 512))
    same = conditioning.lafite_perturb(jax.random.key(0), h, 0.0)
    np.testing.assert_allclose(same, h, atol=1e-6)
    moved = np.asarray(conditioning.lafite_perturb(jax.random.key(1), h, 0.5))
    np.testing.assert_allclose(np.linalg.norm(moved, axis=1), 1.0, atol=1e-5)
    # In 512 dimensions the noise direction is almost orthogonal to h, so
    # cos(h, h') = 0.5 / sqrt(0.5^2 + 0.5^2) = 1/sqrt(2) up to O(1/sqrt(512)) per row.
    cos = np.sum(moved * np.asarray(h), axis=1)
    assert cos.mean() == pytest.approx(2 ** -0.5, abs=0.01)
    noise_only = np.asarray(conditioning.lafite_perturb(jax.random.key(2), h, 1.0))
    assert abs(np.sum(noise_only * np.asarray(h), axis=1).mean()) < 0.01


def test_gap_shift_centres_on_the_given_mean():
    # (1, 0) seen from (0.5, 0.5) is (0.5, -0.5), normalised (1, -1)/sqrt(2).
    got = conditioning.gap_shift(jnp.array([[1.0, 0.0]]), jnp.array([0.5, 0.5]))
    np.testing.assert_allclose(got, [[2 ** -0.5, -(2 ** -0.5)]], atol=1e-6)
    h = jnp.asarray(_unit_rows(8, 16))
    mean = jnp.asarray(_unit_rows(1, 16, seed=3)[0] * 0.3)
    np.testing.assert_allclose(conditioning.noisy_gap_shift(jax.random.key(0), h, mean, 0.0),
                               conditioning.gap_shift(h, mean), atol=1e-6)
    noisy = np.asarray(conditioning.noisy_gap_shift(jax.random.key(0), h, mean, 0.1))
    np.testing.assert_allclose(np.linalg.norm(noisy, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(noisy, conditioning.gap_shift(h, mean))


def test_gapshift_transform_uses_the_image_mean_in_training_and_the_text_mean_at_sampling():
    image_mean, text_mean = np.array([0.5, 0.0], np.float32), np.array([0.0, -0.5], np.float32)
    t = conditioning.ContextTransform("gapshift", noise_std=0.0, train_mean=image_mean, sample_mean=text_mean)
    h = np.array([[1.0, 0.0]], np.float32)
    # Training: (1, 0) - (0.5, 0) = (0.5, 0) -> (1, 0). Sampling: (1, 0) - (0, -0.5) = (1, 0.5) -> /sqrt(1.25).
    np.testing.assert_allclose(t.for_training(jax.random.key(0), jnp.asarray(h)), [[1.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(t.for_training_grid(h), [[1.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(t.for_sampling(h), [[1 / 1.25 ** 0.5, 0.5 / 1.25 ** 0.5]], atol=1e-6)
    lafite = conditioning.ContextTransform("lafite", xi=0.3)
    np.testing.assert_array_equal(lafite.for_sampling(h), h)  # LAFITE changes nothing at sampling
    with pytest.raises(ValueError, match="needs the training image and text means"):
        conditioning.ContextTransform("gapshift")
