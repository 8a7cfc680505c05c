"""Our U-Net is the course's, layer for layer: a PyTorch model built here from the course's
description, loaded with our Flax parameters, computes the same outputs.

The course (Part 4/5, the U-Net with `c_embed_dim`):
  GELUConv          Conv3x3 -> GroupNorm -> GELU
  ResidualConvBlock x1 = GELUConv(x); x1 + GELUConv(x1)
  DownBlock         GELUConv, GELUConv, 2x2 space-to-depth (pixel_unshuffle), GELUConv
  UpBlock           ConvTranspose 2x2 stride 2 over concat(x, skip), then four GELUConvs
  EmbedBlock        Linear -> GELU -> Linear
  bottleneck        Flatten -> GELU, Linear(c2 L^2, c1) -> ReLU -> Linear(c1, c1) -> ReLU
                    -> Linear(c1, c2 L^2) -> ReLU
  out               Conv3x3(2 c0 -> c0) -> GroupNorm(8) -> ReLU -> Conv3x3(c0 -> 3)
  time              sinusoidal embedding of t/T; c_emb * h + t_emb at the two up levels
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn as tnn
import torch.nn.functional as F

from clip_ddpm.models.unet import UNet, count_params


class CourseGELUConv(tnn.Module):
    def __init__(self, cin, cout, groups):
        super().__init__()
        self.conv, self.norm = tnn.Conv2d(cin, cout, 3, padding=1), tnn.GroupNorm(groups, cout)

    def forward(self, x):
        return F.gelu(self.norm(self.conv(x)))


class CourseResidual(tnn.Module):
    def __init__(self, cin, cout, groups):
        super().__init__()
        self.a, self.b = CourseGELUConv(cin, cout, groups), CourseGELUConv(cout, cout, groups)

    def forward(self, x):
        x1 = self.a(x)
        return x1 + self.b(x1)


class CourseDown(tnn.Module):
    def __init__(self, cin, cout, groups):
        super().__init__()
        self.convs = tnn.ModuleList([CourseGELUConv(cin, cout, groups), CourseGELUConv(cout, cout, groups),
                                     CourseGELUConv(4 * cout, cout, groups)])

    def forward(self, x):
        x = self.convs[1](self.convs[0](x))
        return self.convs[2](F.pixel_unshuffle(x, 2))


class CourseUp(tnn.Module):
    def __init__(self, cin, cout, groups):
        super().__init__()
        self.up = tnn.ConvTranspose2d(2 * cin, cout, 2, 2)
        self.convs = tnn.ModuleList([CourseGELUConv(cout, cout, groups) for _ in range(4)])

    def forward(self, x, skip):
        x = self.up(torch.cat((x, skip), 1))
        for conv in self.convs:
            x = conv(x)
        return x


class CourseEmbed(tnn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.a, self.b = tnn.Linear(cin, cout), tnn.Linear(cout, cout)

    def forward(self, v):
        return self.b(F.gelu(self.a(v)))[:, :, None, None]


class CourseUNet(tnn.Module):
    def __init__(self, size, down_chs, t_dim, c_dim):
        super().__init__()
        c0, c1, c2 = down_chs
        self.latent, self.t_dim, self.c2 = size // 4, t_dim, c2
        flat = c2 * self.latent ** 2
        self.down0, self.down1, self.down2 = CourseResidual(3, c0, 8), CourseDown(c0, c1, 32), CourseDown(c1, c2, 32)
        self.dense = tnn.ModuleList([tnn.Linear(flat, c1), tnn.Linear(c1, c1), tnn.Linear(c1, flat)])
        self.up0, self.up1, self.up2 = CourseGELUConv(c2, c2, 32), CourseUp(c2, c1, 32), CourseUp(c1, c0, 32)
        self.t1, self.t2 = CourseEmbed(t_dim, c2), CourseEmbed(t_dim, c1)
        self.c1, self.c2_embed = CourseEmbed(c_dim, c2), CourseEmbed(c_dim, c1)
        self.out_conv0, self.out_norm = tnn.Conv2d(2 * c0, c0, 3, padding=1), tnn.GroupNorm(8, c0)
        self.out_conv1 = tnn.Conv2d(c0, 3, 3, padding=1)

    def time_embedding(self, t_frac):
        half = self.t_dim // 2
        freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
        angles = t_frac[:, None] * freqs[None]
        return torch.cat((angles.sin(), angles.cos()), -1)

    def forward(self, x, t_frac, c):
        d0 = self.down0(x)
        d1 = self.down1(d0)
        d2 = self.down2(d1)
        z = F.gelu(d2.flatten(1))
        for dense in self.dense:
            z = F.relu(dense(z))
        z = z.view(-1, self.c2, self.latent, self.latent)
        te = self.time_embedding(t_frac)
        u0 = self.up0(z)
        u1 = self.up1(self.c1(c) * u0 + self.t1(te), d2)
        u2 = self.up2(self.c2_embed(c) * u1 + self.t2(te), d1)
        out = F.relu(self.out_norm(self.out_conv0(torch.cat((u2, d0), 1))))
        return self.out_conv1(out)


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, np.float32))


def _load_conv(conv: tnn.Conv2d, p):
    conv.weight.data, conv.bias.data = _t(np.asarray(p["kernel"]).transpose(3, 2, 0, 1)), _t(p["bias"])


def _load_gelu_conv(module: CourseGELUConv, p):
    _load_conv(module.conv, p["Conv3x3_0"])
    module.norm.weight.data, module.norm.bias.data = _t(p["GroupNorm_0"]["scale"]), _t(p["GroupNorm_0"]["bias"])


def _load_linear(linear: tnn.Linear, p):
    linear.weight.data, linear.bias.data = _t(np.asarray(p["kernel"]).T), _t(p["bias"])


def _load_embed(module: CourseEmbed, p):
    _load_linear(module.a, p["Dense_0"])
    _load_linear(module.b, p["Dense_1"])


def load_flax_params(model: CourseUNet, params, down_chs) -> CourseUNet:
    """Copies our parameter tree into the PyTorch model (HWIO -> OIHW, [in, out] -> [out, in];
    the bottleneck's flatten order is HWC for us and CHW for PyTorch)."""
    p = params["params"]
    c0, c1, c2 = down_chs
    lat = model.latent
    _load_gelu_conv(model.down0.a, p["down0"]["GELUConv_0"])
    _load_gelu_conv(model.down0.b, p["down0"]["GELUConv_1"])
    for torch_block, name in ((model.down1, "down1"), (model.down2, "down2")):
        for i, conv in enumerate(torch_block.convs):
            _load_gelu_conv(conv, p[name][f"GELUConv_{i}"])
    dense_in = np.asarray(p["dense_in"]["kernel"]).reshape(lat, lat, c2, c1).transpose(2, 0, 1, 3).reshape(-1, c1)
    model.dense[0].weight.data, model.dense[0].bias.data = _t(dense_in.T), _t(p["dense_in"]["bias"])
    _load_linear(model.dense[1], p["dense_mid"])
    dense_out = np.asarray(p["dense_out"]["kernel"]).reshape(c1, lat, lat, c2).transpose(0, 3, 1, 2).reshape(c1, -1)
    bias_out = np.asarray(p["dense_out"]["bias"]).reshape(lat, lat, c2).transpose(2, 0, 1).reshape(-1)
    model.dense[2].weight.data, model.dense[2].bias.data = _t(dense_out.T), _t(bias_out)
    _load_gelu_conv(model.up0, p["up0"])
    for torch_block, name in ((model.up1, "up1"), (model.up2, "up2")):
        up = p[name]["ConvTranspose2x2_0"]
        torch_block.up.weight.data = _t(np.asarray(up["kernel"]).transpose(2, 3, 0, 1))
        torch_block.up.bias.data = _t(up["bias"])
        for i, conv in enumerate(torch_block.convs):
            _load_gelu_conv(conv, p[name][f"GELUConv_{i}"])
    for torch_embed, name in ((model.t1, "t_embed1"), (model.t2, "t_embed2"), (model.c1, "c_embed1"),
                              (model.c2_embed, "c_embed2")):
        _load_embed(torch_embed, p[name])
    _load_conv(model.out_conv0, p["out_conv0"])
    model.out_norm.weight.data, model.out_norm.bias.data = _t(p["out_norm"]["scale"]), _t(p["out_norm"]["bias"])
    _load_conv(model.out_conv1, p["out_conv1"])
    return model


def _random_params(model: UNet, size: int, context_dim: int, seed: int = 0):
    """Random values for every parameter (biases and norm scales too, so none goes untested),
    kernels scaled by 1/sqrt(fan-in) to keep activations O(1). Drawn with numpy from the
    parameter shapes: compiling the model's own initialiser takes XLA:CPU several seconds."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)), jnp.zeros((1,)),
                            jnp.zeros((1, context_dim)))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return rng.normal(0, 1 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape).astype(np.float32)
        return (float(name == "scale") + 0.1 * rng.normal(size=leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _compare(size, down_chs, context_dim, conv_impl, dtype):
    """(ours, the course's) outputs on random inputs, both computed in `dtype`."""
    model = UNet(down_chs=down_chs, t_embed_dim=8, context_dim=context_dim, conv_impl=conv_impl, dtype=dtype)
    x = jax.random.normal(jax.random.key(1), (3, size, size, 3))
    params = _random_params(model, size, context_dim)
    t_frac = jnp.array([0.0, 0.37, 0.99])
    context = jax.random.normal(jax.random.key(3), (3, context_dim))
    ours = np.asarray(jax.jit(model.apply)(params, x.astype(dtype), t_frac, context.astype(dtype)))

    torch_dtype = torch.float64 if dtype == jnp.float64 else torch.float32
    course = load_flax_params(CourseUNet(size, down_chs, 8, context_dim), params, down_chs).to(torch_dtype).eval()
    with torch.no_grad():
        ref = course(*(_t(a).to(torch_dtype) for a in (np.asarray(x).transpose(0, 3, 1, 2), t_frac, context)))
    assert sum(p.numel() for p in course.parameters()) == count_params(params)
    return ours, ref.numpy().transpose(0, 2, 3, 1)


CASES = [(8, (32, 32, 64), 5, "xla"), (16, (32, 64, 64), 12, "matmul"), (12, (64, 32, 32), 3, "xla")]


@pytest.mark.parametrize("size, down_chs, context_dim, conv_impl", CASES)
def test_flax_unet_equals_the_course_unet_in_pytorch(size, down_chs, context_dim, conv_impl):
    """In float64 the two agree to rounding of the float32 time embedding and output cast (1e-6):
    the same function. In float32 they differ by accumulation order only (outputs are O(1))."""
    with jax.enable_x64(True):
        ours, ref = _compare(size, down_chs, context_dim, conv_impl, jnp.float64)
    np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0)
    ours, ref = _compare(size, down_chs, context_dim, conv_impl, jnp.float32)
    np.testing.assert_allclose(ours, ref, atol=5e-5, rtol=0)


def test_course_size_parameter_count_comes_from_the_pytorch_model():
    reference = sum(p.numel() for p in CourseUNet(32, (256, 256, 512), 8, 512).parameters())
    shapes = jax.eval_shape(lambda: UNet(context_dim=512).init(
        jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,)), jnp.zeros((1, 512))))
    assert count_params(shapes) == reference == 44_900_355
