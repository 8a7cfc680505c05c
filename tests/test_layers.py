"""Every form of the U-Net's layers equals PyTorch's operators, in value and in gradient:
3x3 convolutions (XLA's, im2col matmul, hybrid with a matmul kernel gradient) against
torch's conv2d, the transposed convolution against conv_transpose2d, and the fused
GroupNorm+activation against torch's group_norm followed by gelu / relu."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clip_ddpm.models import layers
from clip_ddpm.models.layers import Conv3x3, ConvTranspose2x2
from clip_ddpm.models.norm import GroupNorm


def _nchw(a) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, np.float64).transpose(0, 3, 1, 2).copy()).requires_grad_(True)


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def _ours_value_and_grads(layer, params, x, upstream):
    """(output, d<output, upstream>/d params, d/d x) of a flax layer in float64."""
    def pairing(p, x):
        return jnp.sum(layer.apply(p, x) * upstream)

    out = layer.apply(params, x)
    grads_p, grad_x = jax.grad(pairing, argnums=(0, 1))(params, x)
    return np.asarray(out), jax.tree_util.tree_map(np.asarray, grads_p["params"]), np.asarray(grad_x)


def _check_conv_against_torch(layer, x_shape, out_shape, torch_conv, to_torch_axes, seed):
    """Our conv layer in float64 against `torch_conv(x, kernel, bias)`: output, input gradient
    and parameter gradients of <output, upstream>. `to_torch_axes` permutes our HWIO kernel
    into torch's weight layout."""
    rng = np.random.default_rng(seed)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=x_shape))
        upstream = jnp.asarray(rng.normal(size=out_shape))
        params = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape)),
                                        jax.eval_shape(layer.init, jax.random.key(0), x))
        out, grads, grad_x = _ours_value_and_grads(layer, params, x, upstream)

    kernel = torch.from_numpy(np.asarray(params["params"]["kernel"]).transpose(to_torch_axes).copy())
    kernel.requires_grad_(True)
    bias = torch.tensor(np.asarray(params["params"]["bias"])).requires_grad_(True)
    tx = _nchw(x)
    ref = torch_conv(tx, kernel, bias)
    (ref * _nchw(upstream).detach()).sum().backward()
    back = np.argsort(to_torch_axes)
    np.testing.assert_allclose(out, _nhwc(ref), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad_x, _nhwc(tx.grad), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grads["kernel"], kernel.grad.numpy().transpose(back), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grads["bias"], bias.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl, forms", [("xla", None), ("matmul", None), ("hybrid", None),
                                         ("auto", ("xla", "matmul")), ("auto", ("matmul", "xla"))])
def test_conv3x3_forms_equal_torch_conv2d_in_value_and_gradient(impl, forms, monkeypatch):
    """Every form, and each mix of forward and input-gradient forms that 'auto' can pick."""
    if forms:
        monkeypatch.setattr(layers, "choose_conv3x3_forms", lambda shape, features: forms)
    _check_conv_against_torch(Conv3x3(7, impl=impl, dtype=jnp.float64), (2, 6, 5, 4), (2, 6, 5, 7),
                              lambda x, k, b: F.conv2d(x, k, b, padding=1), (3, 2, 0, 1), seed=0)


@pytest.mark.parametrize("images_per_group", [1, 2, 3])
def test_kernel_gradient_taken_in_groups_of_images_equals_torch(images_per_group, monkeypatch):
    """A batch too large for the cache is summed over groups of images (a scan): still torch's."""
    per_image = 6 * 5 * (4 + 7) * 8  # float64 input and output gradient of one image
    monkeypatch.setattr(layers, "KERNEL_GRAD_GROUP_BYTES", images_per_group * per_image)
    _check_conv_against_torch(Conv3x3(7, impl="matmul", dtype=jnp.float64), (6, 6, 5, 4), (6, 6, 5, 7),
                              lambda x, k, b: F.conv2d(x, k, b, padding=1), (3, 2, 0, 1), seed=1)


@pytest.mark.parametrize("impl", ["xla", "matmul"])
def test_conv_transpose_forms_equal_torch_in_value_and_gradient(impl):
    # torch's ConvTranspose2d weight is [in, out, kh, kw].
    _check_conv_against_torch(ConvTranspose2x2(6, impl=impl, dtype=jnp.float64), (2, 3, 4, 5), (2, 6, 8, 6),
                              lambda x, k, b: F.conv_transpose2d(x, k, b, stride=2), (2, 3, 0, 1), seed=1)


@pytest.mark.parametrize("activation, groups", [("gelu", 4), ("relu", 2), ("none", 8)])
def test_group_norm_act_equals_torch_in_value_and_gradient(activation, groups):
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        # An offset mean and a spread scale, so a variance formula that cancels badly would show.
        x = jnp.asarray(3.0 + 2.0 * rng.normal(size=(3, 5, 4, 8)))
        upstream = jnp.asarray(rng.normal(size=(3, 5, 4, 8)))
        layer = GroupNorm(groups, activation, dtype=jnp.float64)
        params = {"params": {"scale": jnp.asarray(1 + 0.3 * rng.normal(size=8)),
                             "bias": jnp.asarray(0.3 * rng.normal(size=8))}}
        out, grads, grad_x = _ours_value_and_grads(layer, params, x, upstream)

    scale = torch.tensor(np.asarray(params["params"]["scale"])).requires_grad_(True)
    bias = torch.tensor(np.asarray(params["params"]["bias"])).requires_grad_(True)
    tx = _nchw(x)
    ref = F.group_norm(tx, groups, scale, bias, eps=1e-5)
    ref = {"gelu": F.gelu, "relu": F.relu, "none": lambda v: v}[activation](ref)
    (ref * _nchw(upstream).detach()).sum().backward()
    np.testing.assert_allclose(out, _nhwc(ref), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(grad_x, _nhwc(tx.grad), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(grads["scale"], scale.grad.numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(grads["bias"], bias.grad.numpy(), rtol=1e-9, atol=1e-9)


def test_group_norm_in_float32_matches_torch_and_keeps_flax_parameter_names():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 4, 4, 64)).astype(np.float32)
    layer = GroupNorm(32, "gelu")
    params = layer.init(jax.random.key(0), x)
    assert jax.tree_util.tree_map(jnp.shape, params) == {"params": {"scale": (64,), "bias": (64,)}}
    ref = F.gelu(F.group_norm(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), 32, eps=1e-5))
    np.testing.assert_allclose(np.asarray(layer.apply(params, x)), ref.numpy().transpose(0, 2, 3, 1), atol=2e-6)


def test_group_norm_rejects_groups_that_do_not_divide_the_channels():
    with pytest.raises(ValueError, match="does not divide"):
        GroupNorm(3).init(jax.random.key(0), jnp.zeros((1, 2, 2, 8)))
