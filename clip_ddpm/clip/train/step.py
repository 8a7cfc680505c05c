"""The contrastive CLIP objective and its training step, as pure functions jitted over a mesh.

`contrastive_loss` is CLIP's symmetric InfoNCE on one batch of image-caption pairs.
`make_clip_train_step(spec, mesh)` returns the jitted `fn(state, data, key, settings) -> (state, metrics)`
that draws a batch from the dataset held on the devices, preprocesses and augments it there, and
takes one optimiser step; it follows the DDPM step's conventions (state replicated and donated,
batch sharded along 'data', randomness from fold_in(key, step)). The loss needs the similarities
of every image with every caption of the global batch; under jit with shardings XLA gathers the
embeddings across devices for that, so the loss equals the single-device loss.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from clip_ddpm.clip.preprocess import PreprocessConfig, preprocess_images_jax
from clip_ddpm.clip.train.config import MAX_LOGIT_SCALE
from clip_ddpm.models.clip import CLIP, CLIPConfig, l2_normalize
from clip_ddpm.training.batches import draw_batch
from clip_ddpm.training.guard import guard_update
from clip_ddpm.training.parallel import data_sharded, replicated
from clip_ddpm.training.train_state import (
    OptimizerSettings,
    TrainState,
    apply_gradients,
    learning_rate_at,
    make_optimizer,
    tree_l2_norm,
)

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def contrastive_loss(image_embeds: jax.Array, text_embeds: jax.Array,
                     logit_scale: jax.Array) -> tuple[jax.Array, Metrics]:
    """CLIP's symmetric cross-entropy over the N x N cosine similarities of a batch.

    Row i of both inputs is a matching pair. The logits are the cosines times exp(logit_scale)
    (kept at most MAX_LOGIT_SCALE by `clamp_logit_scale` after every update, not by a cap here,
    which would give the parameter no gradient above the cap); the loss is the mean of the
    image->text and text->image cross-entropies towards the diagonal. Returns (loss, metrics)
    with the in-batch top-1 accuracies in both directions, which show learning long before
    zero-shot scores do.
    """
    image = l2_normalize(image_embeds.astype(jnp.float32))
    text = l2_normalize(text_embeds.astype(jnp.float32))
    scale = jnp.exp(logit_scale)
    logits = scale * image @ text.T  # [images, texts]
    labels = jnp.arange(logits.shape[0])
    image_to_text = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    text_to_image = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    metrics = {"image_to_text_accuracy": jnp.mean(jnp.argmax(logits, axis=1) == labels),
               "text_to_image_accuracy": jnp.mean(jnp.argmax(logits, axis=0) == labels),
               "temperature_scale": scale}
    return 0.5 * (image_to_text + text_to_image), metrics


def clamp_logit_scale(max_scale: float = MAX_LOGIT_SCALE) -> optax.GradientTransformation:
    """The last link of the optimiser chain: moves params["logit_scale"] back into
    [0, log max_scale] after the update, as CLIP clamps the parameter itself after each step.
    Being part of the update, it acts before the EMA sees the parameters."""
    limit = math.log(max_scale)

    def update(updates, state, params):
        value = params["logit_scale"]
        return {**updates, "logit_scale": jnp.clip(value + updates["logit_scale"], 0.0, limit) - value}, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def decay_mask(params: dict) -> dict:
    """Weight decay on matrices and convolution kernels only: biases, LayerNorm scales, the
    class embedding and the temperature are left alone, as CLIP trains them."""
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def random_shift(images: jax.Array, key: jax.Array, max_shift: int) -> jax.Array:
    """Each image translated by up to `max_shift` pixels in x and y, edges repeated.

    A position change keeps every caption true (no caption of the data names a position),
    so it is a label-safe augmentation; colour jitter, by contrast, would falsify the captions.
    """
    if max_shift <= 0:
        return images
    n, h, w, _ = images.shape
    offsets = jax.random.randint(key, (n, 2), 0, 2 * max_shift + 1)
    padded = jnp.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)), mode="edge")
    crop = lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (h, w, image.shape[-1]))  # noqa: E731
    return jax.vmap(crop)(padded, offsets)


@dataclasses.dataclass(frozen=True)
class ClipStepSpec:
    """Everything the compiled step depends on; hashable, so equal specs share one program."""

    clip: CLIPConfig
    preprocess: PreprocessConfig
    batch_size: int
    compute_dtype: str = "float32"
    ema_decay: float = 0.999
    random_flip: bool = False
    random_shift: int = 0
    skip_nonfinite: bool = False  # --on_nonfinite=skip: a non-finite step leaves the state as it was

    def model(self) -> CLIP:
        return CLIP(self.clip, dtype=jnp.bfloat16 if self.compute_dtype == "bfloat16" else jnp.float32)


def clip_optimizer(settings: OptimizerSettings) -> optax.GradientTransformation:
    """AdamW as the DDPM's, without decay of gains, biases, embeddings and the temperature, and
    with the temperature clamped after each update."""
    return optax.chain(make_optimizer(settings, weight_decay_mask=decay_mask), clamp_logit_scale())


def clip_loss_fn(model: CLIP, params: dict, batch: Batch) -> tuple[jax.Array, Metrics]:
    """The contrastive loss of `params` on a preprocessed batch (pixels, input_ids, attention_mask)."""
    variables = {"params": params}
    image = model.apply(variables, batch["pixels"], method=CLIP.encode_image)
    text = model.apply(variables, batch["input_ids"], batch["attention_mask"], method=CLIP.encode_text)
    return contrastive_loss(image, text, params["logit_scale"])


def device_batch(data: Batch, key: jax.Array, step: jax.Array, spec: ClipStepSpec) -> Batch:
    """Batch `step` drawn from the on-device dataset, augmented and CLIP-preprocessed there."""
    order_key, shift_key = jax.random.split(key)
    batch = draw_batch(data, order_key, step, spec.batch_size, spec.random_flip)
    images01 = (batch["image"] + 1.0) * 0.5  # draw_batch gives [-1, 1]; preprocessing takes [0, 1]
    images01 = random_shift(images01, jax.random.fold_in(shift_key, step), spec.random_shift)
    return {"pixels": preprocess_images_jax(images01, spec.preprocess),
            "input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


@functools.lru_cache(maxsize=8)
def make_clip_train_step(spec: ClipStepSpec, mesh: Mesh):
    """fn(state, data, key, settings) -> (state, metrics), jitted: one program per (spec, mesh).

    `data` holds the whole dataset on the devices: "image" uint8 [N, H, W, 3] and the
    tokenized captions "input_ids" / "attention_mask" int32 [N, L]. The state is donated.
    """
    model = spec.model()

    def step(state: TrainState, data: Batch, key: jax.Array,
             settings: OptimizerSettings) -> tuple[TrainState, Metrics]:
        batch = device_batch(data, key, state.step, spec)
        batch = jax.lax.with_sharding_constraint(batch, data_sharded(mesh))
        (loss, metrics), grads = jax.value_and_grad(
            functools.partial(clip_loss_fn, model), has_aux=True)(state.params, batch)
        new_state = apply_gradients(state, grads, clip_optimizer(settings), spec.ema_decay)
        metrics = {"loss": loss, **metrics, "grad_norm": tree_l2_norm(grads),
                   "param_norm": tree_l2_norm(new_state.params),
                   "learning_rate": learning_rate_at(settings, state.step)}
        return guard_update(state, new_state, metrics, spec.skip_nonfinite)

    return jax.jit(step, in_shardings=(replicated(mesh), None, replicated(mesh), replicated(mesh)),
                   out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=(0,))
