"""U-Net: shapes and dtypes, and the CPU fast path equal to the plain one (each layer form is
checked against PyTorch's operators in test_layers.py; the architecture in test_unet_course.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from clip_ddpm.models.layers import space_to_depth_2x2
from clip_ddpm.models.unet import UNet
from clip_ddpm.training.compilation import run_once_options


def _init(model, size=32, context_dim=512):
    context = jnp.zeros((1, context_dim)) if context_dim else None
    init = jax.jit(model.init, compiler_options=run_once_options())  # as the trainer initialises
    return init(jax.random.key(0), jnp.zeros((1, size, size, 3)), jnp.zeros((1,)), context)


def test_output_shape_and_dtype_bf16_compute_fp32_params():
    model = UNet(down_chs=(32, 32, 64), context_dim=7, dtype=jnp.bfloat16, conv_impl="matmul")
    params = _init(model, 8, 7)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
    x = jax.random.normal(jax.random.key(1), (3, 8, 8, 3))
    out = jax.jit(model.apply)(params, x, jnp.array([0.0, 0.5, 0.99]), jnp.ones((3, 7)))
    assert out.shape == (3, 8, 8, 3) and out.dtype == jnp.float32
    assert np.isfinite(np.asarray(out)).all()


def test_unconditional_model_takes_no_context():
    model = UNet(down_chs=(32, 32, 64), context_dim=0)
    params = _init(model, 8, 0)
    assert not any("c_embed" in k for k in params["params"])
    assert jax.jit(model.apply)(params, jnp.zeros((2, 8, 8, 3)), jnp.zeros((2,))).shape == (2, 8, 8, 3)


def test_context_width_mismatch_is_an_error():
    model = UNet(down_chs=(32, 32, 64), context_dim=5)
    params = _init(model, 8, 5)
    with pytest.raises(ValueError, match="context of width 5"):
        jax.eval_shape(model.apply, params, jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,)), jnp.zeros((1, 4)))


def test_space_to_depth_matches_torch_pixel_unshuffle():
    x = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3)
    ref = torch.nn.functional.pixel_unshuffle(torch.from_numpy(x).permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    np.testing.assert_array_equal(np.asarray(space_to_depth_2x2(jnp.asarray(x))), ref.numpy())


def test_cpu_fast_path_equals_plain_xla_path_forward_and_gradient():
    """Per-shape conv forms, matmul transposed convs and the fused GroupNorm+activation compute
    the same network, and the same gradients, as XLA's convolutions and flax's GroupNorm."""
    kwargs = dict(down_chs=(32, 32, 64), context_dim=6)
    fast = UNet(conv_impl="auto", upsample_impl="matmul", fused_norm=True, **kwargs)
    plain = UNet(conv_impl="xla", fused_norm=False, **kwargs)
    params = _init(fast, 8, 6)
    key = jax.random.key(3)
    x = jax.random.normal(key, (2, 8, 8, 3))
    t = jnp.array([0.1, 0.7])
    c = jax.random.normal(jax.random.key(4), (2, 6))

    def loss_and_output(model, p):
        out = model.apply(p, x, t, c)
        return jnp.mean(out ** 2), out

    (_, out_fast), g_fast = jax.jit(jax.value_and_grad(lambda p: loss_and_output(fast, p), has_aux=True))(params)
    (_, out_plain), g_plain = jax.jit(jax.value_and_grad(lambda p: loss_and_output(plain, p), has_aux=True))(params)
    np.testing.assert_allclose(out_fast, out_plain, atol=2e-5)
    for a, b in zip(jax.tree_util.tree_leaves(g_fast), jax.tree_util.tree_leaves(g_plain)):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
