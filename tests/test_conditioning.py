"""Classifier-free dropout masks: rates and shapes of both modes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip_ddpm.diffusion import conditioning


def test_sample_mode_drops_whole_vectors_at_the_requested_rate():
    context = jnp.ones((20000, 16))
    dropped = np.asarray(conditioning.drop_context(jax.random.key(0), context, 0.1, "sample"))
    row_sums = dropped.sum(1)
    assert set(np.unique(row_sums)) == {0.0, 16.0}  # all or nothing per example
    assert abs((row_sums == 0).mean() - 0.1) < 0.01


def test_elementwise_mode_drops_elements_at_the_requested_rate():
    context = jnp.ones((5000, 16))
    mask = np.asarray(conditioning.context_keep_mask(jax.random.key(1), context.shape, 0.1, "elementwise"))
    assert mask.shape == (5000, 16)
    assert abs((mask == 0).mean() - 0.1) < 0.01
    # Whole rows are (almost) never all zero: the unconditional context is not seen in training.
    assert (mask.sum(1) == 0).sum() == 0


def test_sample_mask_shape_and_zero_probability_is_identity():
    assert conditioning.context_keep_mask(jax.random.key(0), (8, 5), 0.5, "sample").shape == (8, 1)
    c = jax.random.normal(jax.random.key(2), (4, 3))
    np.testing.assert_array_equal(conditioning.drop_context(jax.random.key(0), c, 0.0), c)


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="unknown context drop mode"):
        conditioning.context_keep_mask(jax.random.key(0), (2, 2), 0.1, "rows")


def test_one_hot_and_normalise():
    np.testing.assert_array_equal(conditioning.one_hot_context(jnp.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])
    v = conditioning.l2_normalize(jnp.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(v, [[0.6, 0.8], [0.0, 0.0]])
