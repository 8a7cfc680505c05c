"""The training loop both trainers share: steps, logging, checkpoints, preemption, guards.

The loop never touches the host between steps except every `log_every` steps (to log) and
when it checkpoints; JAX's asynchronous dispatch keeps the device busy meanwhile.
"""
from __future__ import annotations

import dataclasses
import math
import signal
import time
from typing import Any, Callable

import jax
from absl import logging

from clip_ddpm.errors import UserError
from clip_ddpm.training.checkpoints import Checkpoints
from clip_ddpm.training.metric_writer import MetricWriter


class TrainingDivergedError(UserError):
    """Loss or gradient norm stopped being finite."""


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    num_steps: int
    batch_size: int
    log_every: int
    checkpoint_every: int
    sample_every: int = 0
    stop_at: int | None = None  # stop as if preempted once this step is reached


@dataclasses.dataclass
class TrainResult:
    """What a trainer returns: where it stopped, the last logged metrics and its speed."""

    step: int
    metrics: dict[str, float]
    images_per_second: float
    num_params: int
    preempted: bool = False


@dataclasses.dataclass
class LoopResult:
    state: Any
    step: int
    metrics: dict[str, float]
    images_per_second: float
    preempted: bool


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


def check_finite(metrics: dict[str, float], step: int) -> None:
    for name in ("loss", "grad_norm"):
        value = metrics.get(name)
        if value is not None and not math.isfinite(value):
            raise TrainingDivergedError(
                f"{name} is {value} at step {step}: training diverged; lower --learning_rate or "
                "--grad_clip, or check the data (the last good checkpoint is kept)")


def run_loop(state: Any, iteration: Callable[[Any], tuple[Any, dict]], settings: LoopSettings,
             checkpoints: Checkpoints, writer: MetricWriter,
             write_samples: Callable[[Any, int], None] | None = None, show_progress: bool = True) -> LoopResult:
    """Runs `iteration(state) -> (state, metrics)` up to settings.num_steps from state.step.

    Saves every checkpoint_every steps and at the end (also on SIGTERM), calls
    write_samples(state, step) every sample_every steps and at the end of a finished run.
    """
    start_step = step = int(state.step)
    bar = None
    if show_progress:
        from tqdm import tqdm
        bar = tqdm(total=settings.num_steps, initial=start_step, unit="step", dynamic_ncols=True)
    metrics_out: dict[str, float] = {}
    throughput = 0.0
    preempted = False
    try:
        with _StopSignal() as stop:
            interval_start, interval_steps, first = time.perf_counter(), 0, True
            while step < settings.num_steps:
                state, metrics = iteration(state)
                step += 1
                interval_steps += 1
                if first:  # keep compilation out of the throughput figure
                    jax.block_until_ready(metrics)
                    interval_start, interval_steps, first = time.perf_counter(), 0, False
                if step % settings.log_every == 0 or step == settings.num_steps:
                    metrics_out = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    check_finite(metrics_out, step)
                    if interval_steps:
                        elapsed = time.perf_counter() - interval_start
                        throughput = interval_steps * settings.batch_size / max(elapsed, 1e-9)
                        metrics_out["images_per_second"] = throughput
                    writer.write(step, metrics_out)
                    interval_start, interval_steps = time.perf_counter(), 0
                    if bar is not None:
                        bar.set_postfix(loss=f"{metrics_out['loss']:.4f}", img_s=f"{throughput:.1f}")
                if bar is not None:
                    bar.update(1)
                if step % settings.checkpoint_every == 0:
                    checkpoints.save(step, state)
                if (write_samples and settings.sample_every and step % settings.sample_every == 0
                        and step < settings.num_steps):
                    write_samples(state, step)
                if stop.received or (settings.stop_at is not None and step >= settings.stop_at):
                    preempted = True
                    break
        checkpoints.save(step, state)
        if write_samples and not preempted and step > start_step:
            write_samples(state, step)
    finally:
        if bar is not None:
            bar.close()
        checkpoints.close()
        writer.close()
    return LoopResult(state=state, step=step, metrics=metrics_out, images_per_second=throughput,
                      preempted=preempted)
