"""CLIP (text tower, vision tower, projections, logit scale) in Flax linen.

The parameter tree mirrors the Hugging Face ``CLIPModel`` state dict module for module
(``text_model/encoder/layers_3/self_attn/q_proj``), so converting a checkpoint is a renaming and
a few transposes, and a checkpoint trained here loads in transformers unchanged
(see ``clip_ddpm.clip.weights``).

Parameters are always float32; ``dtype`` only sets the compute dtype (bfloat16 on accelerators).
Embeddings leaving the model are float32 whatever the compute dtype, so downstream code (the
diffusion conditioning, metrics) never sees bfloat16 vectors. The config dataclasses live in
``clip_config`` and are importable from here.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from flax import traverse_util

from clip_ddpm.models.clip_config import (  # noqa: F401  (re-exported: the model's public API)
    ACTIVATION_NAMES,
    LEGACY_EOS_TOKEN_ID,
    CLIPConfig,
    CLIPError,
    CLIPTextConfig,
    CLIPVisionConfig,
)


def _quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": _quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}
assert set(ACTIVATIONS) == set(ACTIVATION_NAMES)


@flax.struct.dataclass
class CLIPOutput:
    """What ``CLIP.__call__`` returns; embeddings are L2-normalised, everything float32."""

    text_embeds: jax.Array
    image_embeds: jax.Array
    logits_per_image: jax.Array
    logits_per_text: jax.Array


def _dense(features: int, dtype: Any, name: str, use_bias: bool = True) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, name=name)


def _layer_norm(eps: float, dtype: Any, name: str) -> nn.LayerNorm:
    # Two-pass variance, as PyTorch computes it: the fast E[x^2]-E[x]^2 form costs parity.
    return nn.LayerNorm(
        epsilon=eps, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False, name=name
    )


class Attention(nn.Module):
    """Multi-head self-attention; masks are boolean, True where a query may see a key."""

    hidden_size: int
    num_heads: int
    dtype: Any = jnp.float32
    implementation: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, is_causal: bool) -> jax.Array:
        batch, length, _ = x.shape
        head_dim = self.hidden_size // self.num_heads

        def heads(name: str) -> jax.Array:
            y = _dense(self.hidden_size, self.dtype, name)(x)
            return y.reshape(batch, length, self.num_heads, head_dim)

        out = jax.nn.dot_product_attention(
            heads("q_proj"), heads("k_proj"), heads("v_proj"),
            mask=mask, is_causal=is_causal, scale=head_dim**-0.5,
            implementation=self.implementation,
        )
        return _dense(self.hidden_size, self.dtype, "out_proj")(out.reshape(batch, length, -1))


class MLP(nn.Module):
    hidden_size: int
    intermediate_size: int
    hidden_act: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _dense(self.intermediate_size, self.dtype, "fc1")(x)
        x = ACTIVATIONS[self.hidden_act](x)
        return _dense(self.hidden_size, self.dtype, "fc2")(x)


class EncoderLayer(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    config: CLIPTextConfig | CLIPVisionConfig
    dtype: Any = jnp.float32
    attention_implementation: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, is_causal: bool) -> jax.Array:
        cfg = self.config
        h = _layer_norm(cfg.layer_norm_eps, self.dtype, "layer_norm1")(x)
        h = Attention(cfg.hidden_size, cfg.num_attention_heads, self.dtype,
                      self.attention_implementation, name="self_attn")(h, mask, is_causal)
        x = x + h
        h = _layer_norm(cfg.layer_norm_eps, self.dtype, "layer_norm2")(x)
        h = MLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act, self.dtype, name="mlp")(h)
        return x + h


class Encoder(nn.Module):
    config: CLIPTextConfig | CLIPVisionConfig
    dtype: Any = jnp.float32
    attention_implementation: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None, is_causal: bool = False) -> jax.Array:
        for i in range(self.config.num_hidden_layers):
            x = EncoderLayer(self.config, self.dtype, self.attention_implementation,
                             name=f"layers_{i}")(x, mask, is_causal)
        return x


def _embed(num: int, features: int, dtype: Any, name: str) -> nn.Embed:
    return nn.Embed(num, features, dtype=dtype, param_dtype=jnp.float32,
                    embedding_init=nn.initializers.normal(0.02), name=name)


class TextEmbeddings(nn.Module):
    config: CLIPTextConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array) -> jax.Array:
        cfg = self.config
        tokens = _embed(cfg.vocab_size, cfg.hidden_size, self.dtype, "token_embedding")(input_ids)
        positions = _embed(cfg.max_position_embeddings, cfg.hidden_size, self.dtype,
                           "position_embedding")(jnp.arange(input_ids.shape[-1]))
        return tokens + positions[None]


class TextTransformer(nn.Module):
    """Causal text transformer; returns the final-LayerNormed state at the end-of-text token."""

    config: CLIPTextConfig
    dtype: Any = jnp.float32
    attention_implementation: str | None = None

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        if input_ids.ndim != 2:
            raise CLIPError(f"input_ids must be [batch, length]; got shape {input_ids.shape}.")
        if input_ids.shape[1] > cfg.max_position_embeddings:
            raise CLIPError(
                f"input_ids has length {input_ids.shape[1]} but the text tower has only "
                f"{cfg.max_position_embeddings} positions; tokenize with that context length."
            )
        x = TextEmbeddings(cfg, self.dtype, name="embeddings")(input_ids)
        mask = None
        if attention_mask is not None:
            mask = (attention_mask != 0)[:, None, None, :]  # [B, heads, queries, keys]
        x = Encoder(cfg, self.dtype, self.attention_implementation, name="encoder")(x, mask, True)
        x = _layer_norm(cfg.layer_norm_eps, self.dtype, "final_layer_norm")(x)
        ids = input_ids.astype(jnp.int32)
        if cfg.eos_token_id == LEGACY_EOS_TOKEN_ID:
            eos_pos = jnp.argmax(ids, axis=-1)
        else:
            eos_pos = jnp.argmax((ids == cfg.eos_token_id).astype(jnp.int32), axis=-1)
        return jnp.take_along_axis(x, eos_pos[:, None, None], axis=1)[:, 0]


class VisionEmbeddings(nn.Module):
    config: CLIPVisionConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        cfg = self.config
        p = cfg.patch_size
        patches = nn.Conv(cfg.hidden_size, (p, p), strides=(p, p), padding="VALID", use_bias=False,
                          dtype=self.dtype, param_dtype=jnp.float32, name="patch_embedding")(pixel_values)
        batch = patches.shape[0]
        patches = patches.reshape(batch, -1, cfg.hidden_size)  # row-major over the patch grid
        cls = self.param("class_embedding", nn.initializers.normal(cfg.hidden_size**-0.5),
                         (cfg.hidden_size,), jnp.float32)
        cls = jnp.broadcast_to(cls.astype(patches.dtype), (batch, 1, cfg.hidden_size))
        x = jnp.concatenate([cls, patches], axis=1)
        positions = _embed(cfg.num_patches + 1, cfg.hidden_size, self.dtype,
                           "position_embedding")(jnp.arange(cfg.num_patches + 1))
        return x + positions[None]


class VisionTransformer(nn.Module):
    """ViT over NHWC images; returns the post-LayerNormed class-token state."""

    config: CLIPVisionConfig
    dtype: Any = jnp.float32
    attention_implementation: str | None = None

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        cfg = self.config
        expected = (cfg.image_size, cfg.image_size, cfg.num_channels)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise CLIPError(
                f"pixel_values must be NHWC [batch, {', '.join(map(str, expected))}]; "
                f"got shape {tuple(pixel_values.shape)}. Preprocess images with clip_ddpm.clip.preprocess."
            )
        x = VisionEmbeddings(cfg, self.dtype, name="embeddings")(pixel_values.astype(self.dtype))
        x = _layer_norm(cfg.layer_norm_eps, self.dtype, "pre_layrnorm")(x)
        x = Encoder(cfg, self.dtype, self.attention_implementation, name="encoder")(x)
        return _layer_norm(cfg.layer_norm_eps, self.dtype, "post_layernorm")(x[:, 0])


def l2_normalize(x: jax.Array) -> jax.Array:
    """x / ||x||, matching transformers (no epsilon: a zero embedding is a bug worth seeing)."""
    return x / jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))


class CLIP(nn.Module):
    """Both CLIP towers, their projections into the shared space, and the learnt temperature.

    ``attention_implementation`` is passed to ``jax.nn.dot_product_attention``: ``None`` (XLA,
    works everywhere) or ``"cudnn"`` (fused kernel on NVIDIA GPUs, bf16/fp16 compute only).
    """

    config: CLIPConfig
    dtype: Any = jnp.float32
    attention_implementation: str | None = None

    def setup(self) -> None:
        cfg = self.config
        self.text_model = TextTransformer(cfg.text, self.dtype, self.attention_implementation)
        self.vision_model = VisionTransformer(cfg.vision, self.dtype, self.attention_implementation)
        init = nn.initializers.normal(0.02)
        self.text_projection = nn.Dense(cfg.projection_dim, use_bias=False, dtype=self.dtype,
                                        param_dtype=jnp.float32, kernel_init=init)
        self.visual_projection = nn.Dense(cfg.projection_dim, use_bias=False, dtype=self.dtype,
                                          param_dtype=jnp.float32, kernel_init=init)
        self.logit_scale = self.param(
            "logit_scale", nn.initializers.constant(cfg.logit_scale_init_value), (), jnp.float32)

    def encode_text(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """Projected, unnormalised text embeddings [batch, projection_dim], float32."""
        pooled = self.text_model(input_ids, attention_mask)
        return self.text_projection(pooled).astype(jnp.float32)

    def encode_image(self, pixel_values: jax.Array) -> jax.Array:
        """Projected, unnormalised image embeddings [batch, projection_dim], float32."""
        return self.visual_projection(self.vision_model(pixel_values)).astype(jnp.float32)

    def __call__(self, input_ids: jax.Array, pixel_values: jax.Array,
                 attention_mask: jax.Array | None = None) -> CLIPOutput:
        text = l2_normalize(self.encode_text(input_ids, attention_mask))
        image = l2_normalize(self.encode_image(pixel_values))
        logits_per_text = jnp.exp(self.logit_scale) * (text @ image.T)
        return CLIPOutput(text_embeds=text, image_embeds=image,
                          logits_per_image=logits_per_text.T, logits_per_text=logits_per_text)


def clip_param_shapes(config: CLIPConfig) -> dict[str, Any]:
    """The parameter tree of ``config`` as ``jax.ShapeDtypeStruct`` leaves, without computing it."""
    v = config.vision
    ids = jax.ShapeDtypeStruct((1, config.text.max_position_embeddings), jnp.int32)
    pixels = jax.ShapeDtypeStruct((1, v.image_size, v.image_size, v.num_channels), jnp.float32)
    variables = jax.eval_shape(CLIP(config).init, jax.random.key(0), ids, pixels)
    return variables["params"]


def _init_std(path: tuple[str, ...], config: CLIPConfig) -> float:
    """Standard deviation of a weight under OpenAI's CLIP initialisation (as transformers uses)."""
    tower = config.text if path[0] == "text_model" else config.vision
    width, depth = tower.hidden_size, tower.num_hidden_layers
    module = path[-2]
    if path[0] == "text_projection":
        return config.text.hidden_size**-0.5
    if path[0] == "visual_projection":
        return config.vision.hidden_size**-0.5
    if module in ("q_proj", "k_proj", "v_proj"):
        return width**-0.5 * (2 * depth) ** -0.5
    if module == "out_proj":
        return width**-0.5
    if module == "fc1":
        return (2 * width) ** -0.5
    if module == "fc2":
        return width**-0.5 * (2 * depth) ** -0.5
    if path[-1] == "class_embedding":
        return width**-0.5
    return 0.02  # token, position and patch embeddings


def init_clip_params(config: CLIPConfig, rng: jax.Array) -> dict[str, Any]:
    """Fresh float32 parameters for ``config``, for training a CLIP from scratch.

    OpenAI's scheme (normal weights with per-role standard deviations, zero biases, unit
    LayerNorm scales, ``logit_scale_init_value``), drawn from one normal sample that is then cut
    into leaves: XLA compiles one random draw per call in well under a second, where a draw per
    parameter (``CLIP(config).init``) takes many seconds to compile on CPU.
    """
    flat = traverse_util.flatten_dict(clip_param_shapes(config))
    sizes = [math.prod(s.shape) for s in flat.values()]

    @jax.jit
    def draw(key: jax.Array) -> dict[tuple[str, ...], jax.Array]:
        noise = jax.random.normal(key, (sum(sizes),), jnp.float32)
        out, start = {}, 0
        for (path, shape), size in zip(flat.items(), sizes):
            leaf = noise[start:start + size].reshape(shape.shape)
            start += size
            if path[-1] == "bias":
                out[path] = jnp.zeros(shape.shape, jnp.float32)
            elif path[-1] == "scale":
                out[path] = jnp.ones(shape.shape, jnp.float32)
            elif path[-1] == "logit_scale":
                out[path] = jnp.full(shape.shape, config.logit_scale_init_value, jnp.float32)
            else:
                out[path] = leaf * _init_std(path, config)
        return out

    return traverse_util.unflatten_dict(draw(rng))
