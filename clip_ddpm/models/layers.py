"""Convolutions with two interchangeable implementations: XLA's and matmul-lowered.

XLA:CPU computes some convolution gradients far slower than matrix products, so each of the
U-Net's two convolution kinds has a matmul form: a 3x3 "same" conv as im2col + one matmul, and
the 2x2 stride-2 transposed conv as one matmul + depth-to-space. Both forms share the same
parameters and compute the same numbers; `resolve_conv_impl` picks per backend (cuDNN on GPU).
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any
CONV_IMPLS = ("auto", "xla", "matmul", "hybrid")
_NHWC = ("NHWC", "HWIO", "NHWC")


def resolve_conv_impl(conv_impl: str) -> tuple[str, str]:
    """(3x3 conv form, 2x2 transposed conv form) for a --conv_impl choice.

    'auto' keeps XLA's 3x3 convolutions everywhere (on XLA:CPU they now beat im2col) and, on CPU,
    lowers the transposed conv to a matmul: XLA:CPU's transposed-conv gradient is 10-25x slower.
    """
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")
    if conv_impl == "auto":
        return ("auto", "matmul") if jax.default_backend() == "cpu" else ("xla", "xla")
    if conv_impl == "hybrid":  # the transposed conv's gradients are matmuls in its matmul form
        return "hybrid", "matmul"
    return conv_impl, conv_impl


def im2col_3x3(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H, W, 9C]: the zero-padded 3x3 neighbourhood of every pixel.

    The last axis is ordered (dy, dx, c), matching an HWIO kernel reshaped to [9C, O].
    """
    _, h, w, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return jnp.concatenate(
        [padded[:, dy:dy + h, dx:dx + w, :] for dy in range(3) for dx in range(3)], axis=-1)


def depth_to_space_2x2(y: jax.Array, features: int) -> jax.Array:
    """[B, H, W, 2*2*F] ordered (dy, dx, f) -> [B, 2H, 2W, F]."""
    b, h, w, _ = y.shape
    y = y.reshape(b, h, w, 2, 2, features)
    return y.transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, features)


def space_to_depth_2x2(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H/2, W/2, 4C] ordered (c, dy, dx), like PyTorch's pixel_unshuffle."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c)
    return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // 2, w // 2, 4 * c)


def conv3x3_xla(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """XLA's 3x3 'same' convolution, NHWC x HWIO."""
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_NHWC)


def conv3x3_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The same convolution as im2col + one matmul ([BHW, 9C] @ [9C, O])."""
    c, o = kernel.shape[2:]
    return im2col_3x3(x) @ kernel.reshape(9 * c, o)


def col2im_3x3(patches: jax.Array) -> jax.Array:
    """The transpose of im2col_3x3: [B, H, W, 9C] -> [B, H, W, C], each pixel summing the
    entries of every neighbourhood it belongs to."""
    b, h, w, nine_c = patches.shape
    c = nine_c // 9
    parts = patches.reshape(b, h, w, 9, c)
    total = sum(jnp.pad(parts[:, :, :, 3 * dy + dx], ((0, 0), (dy, 2 - dy), (dx, 2 - dx), (0, 0)))
                for dy in range(3) for dx in range(3))
    return total[:, 1:h + 1, 1:w + 1]


def conv3x3_input_grad(grad_out: jax.Array, kernel: jax.Array, form: str) -> jax.Array:
    """d(conv3x3(x, k))/dx contracted with grad_out, [B, H, W, O] -> [B, H, W, C].

    'xla': the 'same' correlation of grad_out with the kernel flipped in space and with its
    in/out axes swapped (a forward convolution); 'matmul': grad_out @ kernel^T, then col2im.
    """
    c, o = kernel.shape[2:]
    if form == "xla":
        return conv3x3_xla(grad_out, kernel[::-1, ::-1].transpose(0, 1, 3, 2))
    return col2im_3x3(grad_out @ kernel.reshape(9 * c, o).T)


# Bytes of input and output gradient per group of images whose kernel gradient is computed at
# once: small enough for the nine taps to re-read the group from cache, not from memory.
KERNEL_GRAD_GROUP_BYTES = 2 << 20


def conv3x3_weight_grad(x: jax.Array, grad_out: jax.Array) -> jax.Array:
    """d(conv3x3(x, k))/dk contracted with grad_out: [B, H, W, C], [B, H, W, O] -> [3, 3, C, O].

    Nine matmuls, one per kernel tap: k[dy, dx] = shifted(x)^T @ grad_out over all pixels. On
    XLA:CPU this beats both XLA's own kernel-gradient convolution (a convolution whose window is
    the whole feature map) and one matmul over a materialised im2col, whose 9-way concatenate
    costs more than the products (benchmarks/profile_step.py: 1.3x on the whole train step at
    down_chs (32,32,64), 1.1x at (64,64,128)). Each tap reads the whole input again, so a large
    batch is taken in groups of images of about 2 MiB (a `lax.scan` accumulating the groups' sums):
    at 32 px, batch 32, 32 channels the kernel gradient alone runs 2.5x faster, the whole train
    step about 1.15x.
    """
    b, h, w, c = x.shape
    o = grad_out.shape[-1]
    per_image = h * w * (c + o) * x.dtype.itemsize
    group = max(d for d in range(1, b + 1) if b % d == 0 and (d == 1 or d * per_image <= KERNEL_GRAD_GROUP_BYTES))
    if group == b:
        return _conv3x3_weight_grad_taps(x, grad_out)

    def add_group(total, group_arrays):
        return total + _conv3x3_weight_grad_taps(*group_arrays), None

    groups = (x.reshape(group, b // group, h, w, c).swapaxes(0, 1),
              grad_out.reshape(group, b // group, h, w, o).swapaxes(0, 1))
    total, _ = lax.scan(add_group, jnp.zeros((3, 3, c, o), jnp.promote_types(x.dtype, jnp.float32)), groups)
    return total


def _conv3x3_weight_grad_taps(x: jax.Array, grad_out: jax.Array) -> jax.Array:
    """The nine tap matmuls over all of `x` at once."""
    b, h, w, c = x.shape
    o = grad_out.shape[-1]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    grad = grad_out.reshape(b * h * w, o)
    accumulate = jnp.promote_types(x.dtype, jnp.float32)
    taps = [lax.dot_general(padded[:, dy:dy + h, dx:dx + w, :].reshape(b * h * w, c), grad,
                            (((0,), (0,)), ((), ())), preferred_element_type=accumulate)
            for dy in range(3) for dx in range(3)]
    return jnp.stack(taps).reshape(3, 3, c, o)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv3x3(x: jax.Array, kernel: jax.Array, forward_form: str = "xla", input_grad_form: str = "xla") -> jax.Array:
    """A 3x3 'same' convolution whose forward pass and input gradient each take the form named
    ('xla' or 'matmul'), and whose kernel gradient is always one matmul."""
    return conv3x3_xla(x, kernel) if forward_form == "xla" else conv3x3_matmul(x, kernel)


def _conv3x3_forward(x, kernel, forward_form, input_grad_form):
    return conv3x3(x, kernel, forward_form, input_grad_form), (x, kernel)


def _conv3x3_backward(forward_form, input_grad_form, residuals, grad_out):
    x, kernel = residuals
    dx = conv3x3_input_grad(grad_out, kernel, input_grad_form)
    return dx.astype(x.dtype), conv3x3_weight_grad(x, grad_out).astype(kernel.dtype)


conv3x3.defvjp(_conv3x3_forward, _conv3x3_backward)

# Conv3x3.impl -> (forward form, input-gradient form); 'xla' alone differentiates XLA's own
# convolution (the GPU path: cuDNN computes all three passes well).
CONV3X3_FORMS = {"matmul": ("matmul", "matmul"), "hybrid": ("xla", "xla")}


def choose_conv3x3_forms(input_shape: tuple[int, ...], features: int) -> tuple[str, str]:
    """(forward form, input-gradient form) on XLA:CPU for a 3x3 convolution of this size.

    XLA's own convolution for both: on the whole train step at down_chs (32,32,64), batch 32,
    the matmul input gradient (matmul + col2im) made the step 1.2x slower (benchmarks/conv_forms.py
    measures each pass of each form alone, at every layer shape).
    The kernel gradient is always `conv3x3_weight_grad`. The arguments are kept so that a
    measured size-dependent choice can be made here without touching the callers.
    """
    del input_shape, features
    return "xla", "xla"


class Conv3x3(nn.Module):
    """3x3 convolution, stride 1, zero 'same' padding, with bias. Kernel is HWIO."""

    features: int
    impl: str = "xla"  # "xla", "matmul", "hybrid" or "auto" (see CONV3X3_FORMS)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_features = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (3, 3, in_features, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        x = x.astype(self.dtype)
        kernel = kernel.astype(self.dtype)
        if self.impl == "xla":
            y = conv3x3_xla(x, kernel)
        else:
            forms = choose_conv3x3_forms(x.shape, self.features) if self.impl == "auto" else CONV3X3_FORMS[self.impl]
            y = conv3x3(x, kernel, *forms)
        return y + bias.astype(self.dtype)


class ConvTranspose2x2(nn.Module):
    """2x2 transposed convolution with stride 2 (exact 2x upsampling), with bias.

    out[2i + dy, 2j + dx] = x[i, j] @ kernel[dy, dx] + bias, i.e. PyTorch's ConvTranspose2d
    semantics with the kernel stored HWIO.
    """

    features: int
    impl: str = "xla"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_features = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (2, 2, in_features, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        x = x.astype(self.dtype)
        kernel = kernel.astype(self.dtype)
        if self.impl == "matmul":
            flat = kernel.transpose(2, 0, 1, 3).reshape(in_features, 4 * self.features)
            y = depth_to_space_2x2(x @ flat, self.features)
        else:
            # lax.conv_transpose without kernel transposition correlates with the kernel,
            # so flip it spatially to get the scatter semantics documented above.
            y = lax.conv_transpose(x, kernel[::-1, ::-1], (2, 2), "VALID", dimension_numbers=_NHWC)
        return y + bias.astype(self.dtype)
