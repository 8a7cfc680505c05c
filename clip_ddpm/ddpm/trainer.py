"""The DDPM training loop: data on device, one jitted step, checkpoints, logs, sample grids."""
from __future__ import annotations

import os

import jax
from absl import logging

from clip_ddpm.ddpm import builders
from clip_ddpm.ddpm.config import Config
from clip_ddpm.ddpm.context_transform import build_context_transform, save_context_transform
from clip_ddpm.ddpm.step import StepConfig, make_data_train_step, make_train_step
from clip_ddpm.diffusion.grid import make_sampler, sample_grid
from clip_ddpm.errors import UserError
from clip_ddpm.evaluation.image_grid import save_grid
from clip_ddpm.models.unet import count_params
from clip_ddpm.training import parallel
from clip_ddpm.training.checkpoints import Checkpoints
from clip_ddpm.training.datasets import load_split
from clip_ddpm.training.loop import LoopSettings, TrainResult, run_loop
from clip_ddpm.training.metric_writer import MetricWriter
from clip_ddpm.training.run_lock import holding_workdir
from clip_ddpm.training.train_state import OptimizerSettings, create_train_state, make_optimizer
from clip_ddpm.training.workdir import (
    RunInfo,
    recorded_clip,
    start_run,
    write_flags,
    write_run_info,
)


def train_and_evaluate(config: Config, stop_at: int | None = None) -> TrainResult:
    """Trains (or resumes) the run described by `config` in config.workdir.

    stop_at: stop at that step as a preempted job would (checkpoint, no final samples); the
    next call resumes. Lets a job run in time slices and tests check exact resumption.
    """
    config, mesh, is_chief, resumed = start_run(config)
    with holding_workdir(config.workdir, is_chief):
        return _train(config, stop_at, mesh, is_chief, resumed)


def _train(config: Config, stop_at: int | None, mesh, is_chief: bool, resumed: bool) -> TrainResult:
    dataset = load_split(config, "train")
    parallel.check_dataset_fits_batch(len(dataset), config.batch_size)
    if dataset.image_size != config.image_size:
        raise UserError(f"dataset images are {dataset.image_size}px, --image_size is {config.image_size}")
    contexts = builders.build_context_source(config, dataset, recorded_clip(config.workdir) if resumed else ("", ""))
    transform = build_context_transform(config, dataset, contexts)
    model = builders.build_model(config, contexts.dim)
    schedule = builders.build_schedule(config)
    optimizer_settings = OptimizerSettings.create(config.learning_rate, config.lr_decay_steps, config.warmup_steps,
                                                  config.weight_decay, config.grad_clip, eps=config.adam_eps)
    base_key = jax.random.key(config.seed)
    init_key, train_key, sample_key = jax.random.split(base_key, 3)

    def init_state():
        return create_train_state(builders.init_params(model, config, contexts.dim, init_key),
                                  make_optimizer(optimizer_settings))

    checkpoints = Checkpoints(config.workdir, config.keep_checkpoints)
    state = checkpoints.restore_or_initialize(init_state, parallel.replicated(mesh))
    if is_chief:
        write_flags(config)
        write_run_info(config.workdir, RunInfo(context_dim=contexts.dim, class_names=dataset.class_names,
                                               condition=config.condition,
                                               clip_weights_hash=contexts.clip_weights_hash,
                                               clip_fingerprint=contexts.clip_fingerprint))
        save_context_transform(config.workdir, transform)
    num_params = count_params(state.params)
    logging.info("U-Net: %s parameters; %d devices; %d training images", f"{num_params:,}",
                 mesh.devices.size, len(dataset))

    data = parallel.place_dataset(contexts.device_fields(dataset), mesh)
    step_fn = make_train_step(model, schedule, make_optimizer,
                              StepConfig(config.context_drop_prob, config.context_drop, config.ema_decay,
                                         skip_nonfinite=config.on_nonfinite == "skip",
                                         context_transform=transform, loss_weighting=config.loss_weighting,
                                         min_snr_gamma=config.min_snr_gamma, prediction=config.prediction),
                              mesh)
    train_iteration = make_data_train_step(step_fn, config.batch_size, config.random_flip, mesh,
                                           contexts.batch_context)
    train_key = parallel.place_replicated(train_key, mesh)
    optimizer_settings = parallel.place_replicated(optimizer_settings, mesh)
    train_iteration = parallel.compiled_for_every_process(train_iteration, state, data, train_key, optimizer_settings)

    grid_contexts, _ = contexts.grid_contexts(dataset, config.sample_columns)
    if grid_contexts is not None and contexts.kind == "vectors":
        grid_contexts = transform.for_training_grid(grid_contexts)
    columns = config.sample_columns if grid_contexts is None else len(grid_contexts)
    sampler_fn = make_sampler(model, schedule, (config.image_size, config.image_size, 3),
                              config.sampler, config.sampling_steps, clip_denoised=config.clip_denoised, mesh=mesh,
                              prediction=config.prediction)

    def write_samples(state, step: int) -> None:
        images = sample_grid(sampler_fn, state.ema_params, jax.random.fold_in(sample_key, step),
                             grid_contexts, config.sample_guidance, columns)
        if is_chief:
            save_grid(images, os.path.join(config.workdir, "samples", f"step_{step:07d}.png"), scale=2)

    settings = LoopSettings(config.num_steps, config.batch_size, config.log_every, config.checkpoint_every,
                            config.sample_every, stop_at, config.on_nonfinite, config.max_nonfinite_steps)
    result = run_loop(state, lambda s: train_iteration(s, data, train_key, optimizer_settings), settings, checkpoints,
                      MetricWriter(config.workdir, enabled=is_chief), write_samples if columns else None,
                      show_progress=is_chief)
    return TrainResult(step=result.step, metrics=result.metrics, images_per_second=result.images_per_second,
                       num_params=num_params, preempted=result.preempted)
