"""Contrastive CLIP training on a captioned image dataset, then evaluation and export.

`train_clip_and_evaluate(config)` is the whole run (the CLI only parses flags and calls it):
check the workdir and export directory, train a CLIP-format BPE tokenizer on the training
captions, train a small CLIP from scratch with the shared loop (checkpoints, resume, SIGTERM,
divergence guard), choose its EMA or raw parameters on validation images, score both on the
test split, and save the chosen in the Hugging Face layout, which
`transformers.CLIPModel.from_pretrained` and the DDPM trainer's `--clip_model` read.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from typing import Any

import jax
import numpy as np
from absl import logging

from clip_ddpm.clip.encoder import CLIPEncoder
from clip_ddpm.clip.preprocess import PreprocessConfig
from clip_ddpm.clip.tokenizer import (
    has_tokenizer_files,
    load_tokenizer,
    tokenize,
    train_clip_tokenizer,
)
from clip_ddpm.clip.train.config import ClipTrainConfig
from clip_ddpm.clip.train.evaluation import evaluate_clip, format_table
from clip_ddpm.clip.train.init import mimetic_vision_attention, sincos_vision_positions
from clip_ddpm.clip.train.step import ClipStepSpec, clip_optimizer, make_clip_train_step
from clip_ddpm.clip.weights import save_clip
from clip_ddpm.data import ImageDataset
from clip_ddpm.errors import UserError
from clip_ddpm.models.clip import (
    CLIPConfig,
    CLIPTextConfig,
    CLIPVisionConfig,
    init_clip_params,
)
from clip_ddpm.training import parallel
from clip_ddpm.training.checkpoints import Checkpoints
from clip_ddpm.training.datasets import load_split
from clip_ddpm.training.loop import LoopSettings, TrainResult, run_loop
from clip_ddpm.training.metric_writer import MetricWriter
from clip_ddpm.training.run_lock import holding_workdir
from clip_ddpm.training.train_state import OptimizerSettings, create_train_state
from clip_ddpm.training.workdir import ensure_writable_directory, start_run, write_flags

__all__ = ["ClipTrainConfig", "ClipTrainResult", "train_clip_and_evaluate", "build_clip_config"]

TOKENIZER_DIRNAME = "tokenizer"
EVAL_FILENAME = "eval.json"


@dataclasses.dataclass
class ClipTrainResult(TrainResult):
    """The DDPM trainer's result plus the evaluation and what was exported."""

    evaluation: dict[str, dict[str, float]] | None = None  # test scores: {"ema": {...}, "raw": {...}}
    validation: dict[str, dict[str, float]] | None = None  # the same on the validation images
    exported: str | None = None  # directory of the saved model
    exported_params: str | None = None  # "ema" or "raw"


def build_clip_config(config: ClipTrainConfig, tokenizer) -> CLIPConfig:
    """The model the flags describe, with the vocabulary and special ids of `tokenizer`."""
    text = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=config.text_width,
        intermediate_size=config.text_width * config.mlp_ratio, num_attention_heads=config.text_heads,
        num_hidden_layers=config.text_layers, max_position_embeddings=config.context_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    vision = CLIPVisionConfig(
        hidden_size=config.vision_width, intermediate_size=config.vision_width * config.mlp_ratio,
        num_attention_heads=config.vision_heads, num_hidden_layers=config.vision_layers,
        image_size=config.image_size, patch_size=config.patch_size)
    return CLIPConfig(text=text, vision=vision, projection_dim=config.projection_dim,
                      logit_scale_init_value=math.log(1 / config.init_temperature))


def init_params(config: ClipTrainConfig, clip_config: CLIPConfig, key: jax.Array) -> dict:
    """Fresh parameters: OpenAI's initialisation, with mimetic vision attention and sine-cosine
    vision positions if asked for."""
    params = init_clip_params(clip_config, key)
    if config.vision_position_init == "sincos":
        params = sincos_vision_positions(params, config.image_size // config.patch_size)
    if config.vision_attention_init == "mimetic":
        params = mimetic_vision_attention(params, config.vision_width, config.vision_heads,
                                          jax.random.fold_in(key, 1))
    return params


def check_export_dir(path: str, resumed: bool) -> None:
    """A fresh run never overwrites an existing model; a resumed run may replace its own."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"--export_dir {path} exists and is not a directory")
    if os.path.isdir(path) and os.listdir(path) and not resumed:
        raise UserError(f"--export_dir {path} already holds files and is not overwritten; "
                        "choose another --export_dir or remove it")
    ensure_writable_directory(os.path.dirname(os.path.abspath(path)), "the parent folder of --export_dir")


def _prepare_tokenizer(config: ClipTrainConfig, captions: tuple[str, ...], resumed: bool, is_chief: bool):
    """The run's tokenizer, kept in workdir/tokenizer because the model's vocabulary is tied to it.

    A resumed run loads it. A fresh run copies --tokenizer there, or trains a new one on the
    training captions, replacing whatever an aborted start may have left (its flags may have
    differed). BPE training breaks ties between equally frequent merges arbitrarily, so two
    fresh runs can get different vocabularies; pass --tokenizer to share one between runs.
    """
    directory = os.path.join(config.workdir, TOKENIZER_DIRNAME)
    if config.tokenizer and not has_tokenizer_files(config.tokenizer):
        raise UserError(f"--tokenizer {config.tokenizer} holds no tokenizer (tokenizer.json or vocab.json "
                        "and merges.txt)")
    if not (resumed and os.path.isdir(directory)) and is_chief:
        staging = directory + ".tmp"
        shutil.rmtree(staging, ignore_errors=True)
        if config.tokenizer:
            load_tokenizer(config.tokenizer).save_pretrained(staging)
        else:
            train_clip_tokenizer(captions, config.vocab_size, staging, context_length=config.context_length)
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(staging, directory)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("clip tokenizer written")
    return load_tokenizer(directory)


def _tokenize_captions(tokenizer, captions: tuple[str, ...], context_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Caption ids and masks; a caption longer than the context is an error, not a silent cut."""
    # Decided over every process's captions, so no host stops alone while the others wait for it.
    lengths = [len(ids) for ids in tokenizer(list(captions), add_special_tokens=True)["input_ids"]]
    longest = parallel.global_max(max(lengths))
    if longest > context_length:
        raise UserError(f"the longest caption has {longest} tokens but --context_length={context_length}; "
                        f"use --context_length={longest} or more")
    return tokenize(tokenizer, captions, context_length)


def _local_copy(tree: Any) -> Any:
    """Host numpy copy of a replicated state tree (works when other hosts hold copies too)."""
    return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), tree)


def load_validation(config: ClipTrainConfig, train: ImageDataset) -> ImageDataset:
    """The images the exported parameters are chosen on, never the test images.

    A procedural source renders fresh images of the training distribution (its "validation"
    split, --eval_size of them). A fixed dataset has no unseen images to spare, so the choice
    is made on the first --eval_size (default 1000) of this process's training images.
    """
    if config.dataset == "shapes":
        return load_split(config, "validation", num_images=config.eval_size, whole=True)
    return train.subset(np.arange(min(len(train), config.eval_size or 1000)), "-validation")


def choose_exported(validation: dict[str, dict[str, float]]) -> str:
    """The EMA parameters unless the raw ones classify the validation images strictly better
    (short runs can go either way)."""
    return "raw" if validation["raw"]["zero_shot_class"] > validation["ema"]["zero_shot_class"] else "ema"


def train_clip_and_evaluate(config: ClipTrainConfig) -> ClipTrainResult:
    """Trains (or resumes) the CLIP run in config.workdir; evaluates and exports it when done."""
    config, mesh, is_chief, resumed = start_run(config)
    with holding_workdir(config.workdir, is_chief):
        return _train_clip(config, mesh, is_chief, resumed)


def _train_clip(config: ClipTrainConfig, mesh, is_chief: bool, resumed: bool) -> ClipTrainResult:
    check_export_dir(config.export_path, resumed)

    train = load_split(config, "train")
    parallel.check_dataset_fits_batch(len(train), config.batch_size)
    if train.image_size != config.image_size:
        raise UserError(f"dataset images are {train.image_size}px, --image_size is {config.image_size}")
    with parallel.decided_together("loading the test split"):  # needed at the end: checked before step 0
        test = load_split(config, "test", num_images=config.eval_size, whole=True) if is_chief else None
        validation = load_validation(config, train) if is_chief else None
    tokenizer = _prepare_tokenizer(config, parallel.gather_strings(train.captions), resumed, is_chief)
    ids, mask = _tokenize_captions(tokenizer, train.captions, config.context_length)
    clip_config = build_clip_config(config, tokenizer)
    preprocess = PreprocessConfig.for_image_size(config.image_size)
    spec = ClipStepSpec(
        clip=clip_config, preprocess=preprocess, batch_size=config.batch_size, compute_dtype=config.dtype,
        ema_decay=config.ema_decay, random_flip=config.random_flip, random_shift=config.random_shift,
        skip_nonfinite=config.on_nonfinite == "skip")
    optimizer_settings = OptimizerSettings.create(config.learning_rate, config.lr_decay_steps, config.warmup_steps,
                                                  config.weight_decay, config.grad_clip, eps=config.adam_eps)
    init_key, train_key = jax.random.split(jax.random.key(config.seed))

    def init_state():
        return create_train_state(init_params(config, clip_config, init_key), clip_optimizer(optimizer_settings))

    checkpoints = Checkpoints(config.workdir, config.keep_checkpoints)
    state = checkpoints.restore_or_initialize(init_state, parallel.replicated(mesh))
    if is_chief:
        write_flags(config)
    num_params = int(sum(x.size for x in jax.tree_util.tree_leaves(state.params)))
    logging.info("CLIP: %s parameters, vocabulary %d; %d devices; %d training pairs", f"{num_params:,}",
                 len(tokenizer), mesh.devices.size, len(train))

    data = parallel.place_dataset({"image": train.images, "input_ids": ids, "attention_mask": mask}, mesh)
    step_fn = make_clip_train_step(spec, mesh)
    train_key = parallel.place_replicated(train_key, mesh)
    optimizer_settings = parallel.place_replicated(optimizer_settings, mesh)
    step_fn = parallel.compiled_for_every_process(step_fn, state, data, train_key, optimizer_settings)
    settings = LoopSettings(config.num_steps, config.batch_size, config.log_every, config.checkpoint_every,
                            on_nonfinite=config.on_nonfinite, max_nonfinite_steps=config.max_nonfinite_steps)
    loop = run_loop(state, lambda s: step_fn(s, data, train_key, optimizer_settings), settings, checkpoints,
                    MetricWriter(config.workdir, enabled=is_chief), show_progress=is_chief)
    result = ClipTrainResult(step=loop.step, metrics=loop.metrics, images_per_second=loop.images_per_second,
                             num_params=num_params, preempted=loop.preempted)
    if loop.preempted or loop.step < config.num_steps or not is_chief:
        return result

    candidates = {"ema": _local_copy(loop.state.ema_params), "raw": _local_copy(loop.state.params)}
    encoders = {name: CLIPEncoder(clip_config, params, tokenizer, preprocess=preprocess, dtype=spec.model().dtype,
                                  batch_size=config.eval_batch_size, context_length=config.context_length)
                for name, params in candidates.items()}
    # Chosen on the validation images, reported on the test images, which play no part in it.
    chosen_on = {name: evaluate_clip(encoder, validation) for name, encoder in encoders.items()}
    evaluation = {name: evaluate_clip(encoder, test) for name, encoder in encoders.items()}
    best = choose_exported(chosen_on)
    table = format_table(evaluation)
    print(f"\nCLIP after {loop.step} steps on {test.name} ({len(test)} images); exported: {best} "
          f"(chosen on {validation.name})\n{table}", flush=True)
    with open(os.path.join(config.workdir, EVAL_FILENAME), "w", encoding="utf-8") as handle:
        json.dump({"step": loop.step, "test_set": test.name, "validation_set": validation.name, "exported": best,
                   **evaluation, "validation": chosen_on}, handle, indent=1)
    save_clip(config.export_path, clip_config, candidates[best], tokenizer,
              preprocess=preprocess, overwrite=resumed)
    logging.info("CLIP saved in %s (%s parameters)", config.export_path, best)
    result.evaluation, result.validation = evaluation, chosen_on
    result.exported, result.exported_params = config.export_path, best
    return result
