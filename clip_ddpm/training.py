"""The DDPM training loop: data on device, one jitted step, checkpoints, logs, sample grids."""
from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from typing import Any

import jax
from absl import logging

from clip_ddpm import builders, parallel
from clip_ddpm.checkpoints import Checkpoints, abstract_like
from clip_ddpm.config import Config
from clip_ddpm.ddpm_step import StepConfig, make_data_train_step, make_train_step
from clip_ddpm.errors import UserError
from clip_ddpm.image_grid import save_grid
from clip_ddpm.metric_writer import MetricWriter
from clip_ddpm.models.unet import count_params
from clip_ddpm.sampling import make_sampler, sample_grid
from clip_ddpm.train_state import create_train_state, make_optimizer
from clip_ddpm.workdir import RunInfo, check_workdir, write_flags, write_run_info


class TrainingDivergedError(UserError):
    """Loss or gradient norm stopped being finite."""


@dataclasses.dataclass
class TrainResult:
    step: int
    metrics: dict[str, float]
    images_per_second: float
    num_params: int
    preempted: bool = False


class _StopSignal:
    """Turns SIGTERM (preemption) into a flag the loop checks, so it can checkpoint and exit."""

    def __init__(self):
        self.received = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint and stopping")
        self.received = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


def train_and_evaluate(config: Config) -> TrainResult:
    """Trains (or resumes) the run described by `config` in config.workdir."""
    config.validate()
    parallel.initialize_distributed(config.distributed)
    parallel.configure_jax()
    is_chief = jax.process_index() == 0
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.batch_size, mesh)
    resuming = check_workdir(config)

    dataset = builders.load_training_dataset(config)
    if len(dataset) * jax.process_count() < config.batch_size:
        raise UserError(f"--batch_size={config.batch_size} is larger than the dataset ({len(dataset)} images)")
    if dataset.image_size != config.image_size:
        raise UserError(f"dataset images are {dataset.image_size}px, --image_size is {config.image_size}")
    contexts = builders.build_context_source(config, dataset)
    model = builders.build_model(config, contexts.dim)
    schedule = builders.build_schedule(config)
    optimizer, lr_fn = make_optimizer(config.learning_rate, config.num_steps, config.warmup_steps,
                                      config.weight_decay, config.grad_clip)
    base_key = jax.random.key(config.seed)
    init_key, train_key, sample_key = jax.random.split(base_key, 3)

    def init_state():
        return create_train_state(builders.init_params(model, config, contexts.dim, init_key), optimizer)

    checkpoints = Checkpoints(config.workdir, config.keep_checkpoints)
    abstract_state = abstract_like(jax.eval_shape(init_state), parallel.replicated(mesh))
    if checkpoints.latest_step() is not None:
        state = checkpoints.restore(abstract_state)
        logging.info("resumed from step %d", int(state.step))
    else:
        state = jax.jit(init_state, out_shardings=parallel.replicated(mesh))()
    if is_chief:
        write_flags(config)
        write_run_info(config.workdir, RunInfo(context_dim=contexts.dim, class_names=dataset.class_names,
                                               condition=config.condition))
    num_params = count_params(state.params)
    logging.info("U-Net: %s parameters; %d devices; %d training images", f"{num_params:,}",
                 mesh.devices.size, len(dataset))

    data = parallel.place_dataset(contexts.device_fields(dataset), mesh)
    step_fn = make_train_step(model, schedule, optimizer, lr_fn,
                              StepConfig(config.context_drop_prob, config.context_drop, config.ema_decay),
                              mesh)
    train_iteration = make_data_train_step(step_fn, config.batch_size, config.random_flip, mesh,
                                           contexts.batch_context)
    train_key = parallel.place_replicated(train_key, mesh)

    grid_contexts, _ = contexts.grid_contexts(dataset, config.sample_columns)
    columns = config.sample_columns if grid_contexts is None else len(grid_contexts)
    sampler_fn = make_sampler(model, schedule, (config.image_size, config.image_size, 3),
                              config.sampler, config.sampling_steps)

    def write_samples(step: int) -> None:
        images = sample_grid(sampler_fn, state.ema_params, jax.random.fold_in(sample_key, step),
                             grid_contexts, config.sample_guidance, columns)
        if is_chief:
            save_grid(images, os.path.join(config.workdir, "samples", f"step_{step:07d}.png"), scale=2)

    writer = MetricWriter(config.workdir, enabled=is_chief)
    start_step = int(state.step)
    step = start_step
    bar = _progress(config.num_steps, start_step, is_chief)
    last_metrics: dict[str, float] = {}
    throughput = 0.0
    preempted = False
    try:
        with _StopSignal() as stop:
            interval_start, interval_steps, first = time.perf_counter(), 0, True
            while step < config.num_steps:
                state, metrics = train_iteration(state, data, train_key)
                step += 1
                interval_steps += 1
                if first:  # exclude compilation from the throughput figure
                    jax.block_until_ready(metrics)
                    interval_start, interval_steps, first = time.perf_counter(), 0, False
                if step % config.log_every == 0 or step == config.num_steps:
                    last_metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    _check_finite(last_metrics, step)
                    elapsed = time.perf_counter() - interval_start
                    if interval_steps:
                        throughput = interval_steps * config.batch_size / max(elapsed, 1e-9)
                        last_metrics["images_per_second"] = throughput
                    writer.write(step, last_metrics)
                    interval_start, interval_steps = time.perf_counter(), 0
                    if bar is not None:
                        bar.set_postfix(loss=f"{last_metrics['loss']:.4f}", img_s=f"{throughput:.1f}")
                if bar is not None:
                    bar.update(1)
                if step % config.checkpoint_every == 0:
                    checkpoints.save(step, state)
                if config.sample_every and step % config.sample_every == 0 and step < config.num_steps:
                    write_samples(step)
                if stop.received:
                    preempted = True
                    break
        checkpoints.save(step, state)
        if not preempted and step > start_step:
            write_samples(step)
    finally:
        if bar is not None:
            bar.close()
        checkpoints.close()
        writer.close()
    return TrainResult(step=step, metrics=last_metrics, images_per_second=throughput,
                       num_params=num_params, preempted=preempted)


def _check_finite(metrics: dict[str, Any], step: int) -> None:
    for name in ("loss", "grad_norm"):
        value = metrics.get(name)
        if value is not None and not math.isfinite(value):
            raise TrainingDivergedError(
                f"{name} is {value} at step {step}: training diverged; lower --learning_rate or "
                "--grad_clip, or check the data (the last good checkpoint is kept)")
