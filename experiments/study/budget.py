"""How long a study takes on an accelerator, from the FLOPs XLA counts in each of its programs.

Every program the study runs is lowered (not compiled, not run) at the configured sizes and
XLA's cost analysis gives its FLOPs: a DDPM train step (loss and gradient; the optimiser's
element-wise work is negligible beside the convolutions), a guided sampler step (the U-Net on
the conditional and unconditional halves), a CLIP train step and embedding, an oracle step.
Multiplied by how often the study runs each, and divided by the rate the device sustains (a
stated fraction of its dense bf16 peak), that is the estimate: compilation, checkpoints and
host work are not in it.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def _flops(fn, *args) -> float:
    analysis = jax.jit(fn).lower(*args).cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return float(analysis["flops"])


def _abstract(shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


def ddpm_flops(config, context_dim: int, batch: int, train: bool) -> float:
    """FLOPs of one DDPM train step at `batch` (train) or one U-Net call on `batch` images."""
    from clip_ddpm.ddpm import builders

    # Counted with XLA's own convolutions, the form an accelerator runs: the CPU's matmul form
    # computes the kernel gradient in a loop over groups of images, whose body cost analysis
    # counts once (a train step of the course U-Net would count a third too few FLOPs).
    config = dataclasses.replace(config, conv_impl="xla")
    model = builders.build_model(config, context_dim)
    size = config.image_size
    x, t = _abstract((batch, size, size, 3)), _abstract((batch,))
    c = _abstract((batch, context_dim)) if context_dim else None
    params = jax.eval_shape(lambda: builders.init_params(model, config, context_dim, jax.random.key(0)))
    if not train:
        return _flops(lambda p, x, t, c: model.apply(p, x, t, c), params, x, t, c)

    def loss(p, x, t, c):
        return jnp.mean(jnp.square(model.apply(p, x, t, c) - x))

    return _flops(jax.value_and_grad(loss), params, x, t, c)


def clip_flops(clip_config, batch: int, image_size: int, context_length: int) -> dict[str, float]:
    """FLOPs of one contrastive train step, and of embedding one batch of images and of texts."""
    from clip_ddpm.clip.train.step import contrastive_loss
    from clip_ddpm.models.clip import CLIP, init_clip_params

    model = CLIP(clip_config)
    params = jax.eval_shape(lambda: init_clip_params(clip_config, jax.random.key(0)))
    pixels = _abstract((batch, image_size, image_size, 3))
    ids, mask = _abstract((batch, context_length), jnp.int32), _abstract((batch, context_length), jnp.int32)

    def loss(p, pixels, ids, mask):
        image = model.apply({"params": p}, pixels, method=CLIP.encode_image)
        text = model.apply({"params": p}, ids, mask, method=CLIP.encode_text)
        return contrastive_loss(image, text, p["logit_scale"])[0]

    image_fn = lambda p, x: model.apply({"params": p}, x, method=CLIP.encode_image)  # noqa: E731
    text_fn = lambda p, i, m: model.apply({"params": p}, i, m, method=CLIP.encode_text)  # noqa: E731
    return {"train_step": _flops(jax.grad(loss), params, pixels, ids, mask),
            "images": _flops(image_fn, params, pixels), "texts": _flops(text_fn, params, ids, mask)}


def oracle_flops(spec, batch: int, image_size: int) -> float:
    import optax

    model = spec.model()
    images = _abstract((batch, image_size, image_size, 3))
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3))))

    def loss(p, x):
        _, logits = model.apply(p, x)
        return sum(optax.softmax_cross_entropy_with_integer_labels(lg, jnp.zeros(batch, jnp.int32)).mean()
                   for lg in logits)

    return _flops(jax.grad(loss), params, images)


@dataclasses.dataclass
class Estimate:
    rows: list[tuple[str, float]]  # (what, FLOPs)
    rate: float  # FLOP/s assumed

    @property
    def total(self) -> float:
        return sum(f for _, f in self.rows)

    def table(self) -> str:
        width = max(len(what) for what, _ in self.rows) + 2
        lines = [f"{'part':<{width}}{'PFLOP':>10}{'minutes':>10}"]
        for what, f in self.rows:
            lines.append(f"{what:<{width}}{f / 1e15:>10.3f}{f / self.rate / 60:>10.2f}")
        lines.append(f"{'total':<{width}}{self.total / 1e15:>10.3f}{self.total / self.rate / 60:>10.2f}")
        return "\n".join(lines)


class _VocabularyOnly:
    """What build_clip_config reads of a tokenizer, for a CLIP not trained yet."""

    def __init__(self, size: int):
        self._size = size
        self.bos_token_id, self.eos_token_id, self.pad_token_id = size - 2, size - 1, size - 1

    def __len__(self) -> int:
        return self._size


def estimate_study(setup, rate: float, pretrained_context_dim: int = 512) -> Estimate:
    """The FLOPs of every part of the study `setup` describes, at `rate` FLOP/s."""
    from clip_ddpm.clip.train.trainer import build_clip_config
    from clip_ddpm.data.shapes import CLASS_NAMES
    from clip_ddpm.evaluation.oracle import OracleSpec
    from clip_ddpm.models.clip import CLIPConfig

    from .variants import base_name, uses_prompts

    study, ddpm, clip = setup.study, setup.ddpm, setup.clip
    rows: list[tuple[str, float]] = []
    trains_clip = not (study.clip_model or study.clip_run)
    context_dim = clip.projection_dim if trains_clip else pretrained_context_dim
    if trains_clip:
        clip_config = build_clip_config(clip, _VocabularyOnly(clip.vocab_size))
        clip_costs = clip_flops(clip_config, clip.batch_size, clip.image_size, clip.context_length)
        per_item = {k: v / clip.batch_size for k, v in clip_costs.items()}
    else:  # a pretrained CLIP: its embeddings costed as a ViT-B/32 (the models' defaults)
        vit_b32 = CLIPConfig()
        clip_costs = clip_flops(vit_b32, 8, vit_b32.vision.image_size, vit_b32.text.max_position_embeddings)
        per_item = {k: v / 8 for k, v in clip_costs.items()}
    copies = int(trains_clip) + int(study.scorer_clip_seed >= 0 and not study.scorer_clip_model)
    if copies:
        rows.append((f"CLIP training ({copies} x {clip.num_steps} steps)", copies * clip.num_steps * clip_costs["train_step"]))
    train_images = ddpm.dataset_size or 10000
    rows.append(("CLIP embeddings of the training set", 2 * train_images * (per_item["images"] + per_item["texts"])))
    if study.oracle == "cnn":
        spec = OracleSpec(widths=tuple(study.oracle_widths), feature_dim=study.oracle_feature_dim)
        rows.append((f"oracle ({study.oracle_steps} steps)",
                     study.oracle_steps * oracle_flops(spec, study.oracle_batch_size, ddpm.image_size)))
    num_classes = len(CLASS_NAMES) if ddpm.dataset == "shapes" else 5
    sample_steps = ddpm.timesteps if study.sampler == "ddpm" else study.sampling_steps
    validation_rows = num_classes * len(study.validation_templates) * study.validation_samples * len(study.guidance)
    test_rows = num_classes * len(study.test_templates) * study.test_samples
    for variant in study.variants:
        condition = {"class": num_classes, "none": 0}.get(base_name(variant), context_dim)
        step = ddpm_flops(ddpm, condition, ddpm.batch_size, train=True)
        per_image = ddpm_flops(ddpm, condition, 64, train=False) / 64 * (2 if condition else 1)
        runs = len(study.seeds)
        rows.append((f"{variant}: train {runs} x {ddpm.num_steps} steps", runs * ddpm.num_steps * step))
        images = (validation_rows // (len(study.guidance) if condition == 0 else 1)) + test_rows
        rows.append((f"{variant}: sample {runs} x {images} images x {sample_steps} steps",
                     runs * images * sample_steps * per_image))
        if uses_prompts(variant) or condition:
            rows.append((f"{variant}: CLIP scores", runs * (validation_rows + test_rows) * per_item["images"]))
    return Estimate(rows, rate)
