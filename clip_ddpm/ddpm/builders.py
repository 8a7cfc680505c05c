"""Turning a Config into the run's parts; shared by training and sampling so both rebuild
exactly the same model, schedule and conditioning from `flags.txt`."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from clip_ddpm import diffusion
from clip_ddpm.data import ImageDataset
from clip_ddpm.ddpm.config import Config
from clip_ddpm.ddpm.contexts import ContextSource, context_source_for
from clip_ddpm.models.layers import resolve_conv_impl
from clip_ddpm.models.unet import UNet


def build_model(config: Config, context_dim: int) -> UNet:
    conv_impl, upsample_impl = resolve_conv_impl(config.conv_impl)
    return UNet(down_chs=tuple(config.down_chs), t_embed_dim=config.t_embed_dim, context_dim=context_dim,
                conv_impl=conv_impl, upsample_impl=upsample_impl,
                dtype=jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32)


def build_schedule(config: Config) -> diffusion.Schedule:
    return diffusion.make_schedule(config.schedule, config.timesteps, config.beta_start, config.beta_end)


def build_context_source(config: Config, dataset: ImageDataset, trained_clip: tuple[str, str] = ("", "")
                         ) -> ContextSource:
    """The conditioning of --condition for this dataset (CLIP conditions read the cache, and
    refuse a CLIP other than `trained_clip`, the (weights hash, fingerprint) a resumed run was
    trained with)."""
    if config.condition in ("clip_image", "clip_text"):
        from clip_ddpm.clip.embedding_cache import clip_context_vectors
        vectors, encoder = clip_context_vectors(config, dataset, trained_clip=trained_clip)
        source = context_source_for(config.condition, dataset, vectors=vectors)
        return dataclasses.replace(source, clip_weights_hash=encoder.weights_hash,
                                   clip_fingerprint=encoder.fingerprint)
    return context_source_for(config.condition, dataset, config.context_file)


def init_params(model: UNet, config: Config, context_dim: int, key: jax.Array):
    """Parameters for images of the configured size (float32)."""
    size = config.image_size
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    context = jnp.zeros((1, context_dim), jnp.float32) if context_dim else None
    return model.init(key, x, jnp.zeros((1,), jnp.float32), context)
