"""The from-scratch initialisations of the CLIP trainer: mimetic attention and 2-D sine-cosine positions."""
import jax
import numpy as np
import pytest

from clip_ddpm.clip.train.init import mimetic_layer, sincos_2d, sincos_vision_positions


def test_sincos_codes_make_nearby_patches_alike():
    grid, width = 4, 32
    codes = np.asarray(sincos_2d(grid, width))
    assert codes.shape == (grid * grid, width)
    # Each (sin, cos) pair has unit norm, so every code has norm sqrt(width / 2).
    np.testing.assert_allclose(np.linalg.norm(codes, axis=1), np.sqrt(width / 2), rtol=1e-6)
    similarity = codes @ codes.T
    ys, xs = np.divmod(np.arange(grid * grid), grid)
    distance = np.abs(ys[:, None] - ys[None]) + np.abs(xs[:, None] - xs[None])
    # From every patch, a neighbour one step away is more similar than any patch three or more steps away.
    for i in range(grid * grid):
        assert similarity[i, distance[i] == 1].min() > similarity[i, distance[i] >= 3].max()
    # Closed form of one entry: row (y=1, x=2), channel 0 is sin(1 * omega_0) = sin(1).
    np.testing.assert_allclose(codes[1 * grid + 2, 0], np.sin(1.0), rtol=1e-6)
    np.testing.assert_allclose(codes[1 * grid + 2, width // 2], np.sin(2.0), rtol=1e-6)


def test_sincos_needs_a_width_divisible_by_four():
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(4, 30)


def test_sincos_vision_positions_keeps_the_class_row_zero_and_the_rest_of_the_tree():
    table = np.ones((1 + 9, 8), np.float32)
    params = {"vision_model": {"embeddings": {"position_embedding": {"embedding": table},
                                              "class_embedding": np.ones(8)}, "other": 1}, "text_model": 2}
    out = sincos_vision_positions(params, grid=3)
    new = np.asarray(out["vision_model"]["embeddings"]["position_embedding"]["embedding"])
    np.testing.assert_array_equal(new[0], 0.0)
    np.testing.assert_allclose(new[1:], np.asarray(sincos_2d(3, 8)), rtol=1e-6)
    assert out["text_model"] == 2 and out["vision_model"]["other"] == 1
    np.testing.assert_array_equal(out["vision_model"]["embeddings"]["class_embedding"], 1.0)


def test_mimetic_products_are_near_plus_and_minus_identity():
    width, heads = 64, 4
    kernels = mimetic_layer(jax.random.key(0), width, heads)
    q, k = np.asarray(kernels["q_proj"]), np.asarray(kernels["k_proj"])
    v, o = np.asarray(kernels["v_proj"]), np.asarray(kernels["out_proj"])
    head_dim = width // heads
    for h in range(heads):
        cols = slice(h * head_dim, (h + 1) * head_dim)
        qk = q[:, cols] @ k[:, cols].T
        # A positive multiple of the identity dominates: the diagonal is large and positive on average.
        assert np.mean(np.diag(qk)) > 3 * np.abs(qk - np.diag(np.diag(qk))).mean()
    vo = v @ o
    assert np.mean(np.diag(vo)) < -3 * np.abs(vo - np.diag(np.diag(vo))).mean()
