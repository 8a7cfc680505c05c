"""The training loop both trainers share: steps, logging, checkpoints, preemption, guards.

The loop reads nothing back between steps except every `log_every` steps (to log) and when
it checkpoints; JAX's asynchronous dispatch keeps the device busy meanwhile, never more than a
few steps ahead (`training.in_flight`: a deeper queue can deadlock a CPU split into devices).
Before each log and each save it reads the divergence guard's flags of every step since the
last look, so no checkpoint ever holds a non-finite state (`training.guard`). On SIGTERM every
process stops at one agreed step (`training.preemption`), saves and returns, skipping a sample
grid due then.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax

from clip_ddpm.training.checkpoints import Checkpoints
from clip_ddpm.training.guard import DivergenceGuard, TrainingDivergedError
from clip_ddpm.training.in_flight import StepsInFlight
from clip_ddpm.training.metric_writer import MetricWriter
from clip_ddpm.training.preemption import PreemptionWatch

__all__ = ["LoopSettings", "TrainResult", "LoopResult", "TrainingDivergedError", "run_loop"]


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    num_steps: int
    batch_size: int
    log_every: int
    checkpoint_every: int
    sample_every: int = 0
    stop_at: int | None = None  # stop as if preempted once this step is reached
    on_nonfinite: str = "stop"  # the divergence policy (see training.guard)
    max_nonfinite_steps: int = 10


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
    guard = DivergenceGuard(settings.on_nonfinite, settings.max_nonfinite_steps)
    in_flight = StepsInFlight()

    def save(at: int) -> None:
        guard.check(checkpoints.latest_step())  # a non-finite state is never written
        checkpoints.save(at, state)

    try:
        with PreemptionWatch() as preemption:
            interval_start, interval_steps, first = time.perf_counter(), 0, True
            while step < settings.num_steps:
                state, metrics = iteration(state)
                in_flight.dispatched(metrics)
                step += 1
                interval_steps += 1
                guard.record(step, metrics)
                if first:  # keep compilation out of the throughput figure
                    jax.block_until_ready(metrics)
                    interval_start, interval_steps, first = time.perf_counter(), 0, False
                if step % settings.log_every == 0 or step == settings.num_steps:
                    guard.check(checkpoints.latest_step())
                    metrics_out = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    metrics_out["skipped_steps"] = float(guard.skipped)
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
                preempted = preemption.reached(step) or (settings.stop_at is not None and step >= settings.stop_at)
                if step % settings.checkpoint_every == 0 or preempted:
                    save(step)
                if preempted:  # a grid due now would only delay leaving
                    break
                if (write_samples and settings.sample_every and step % settings.sample_every == 0
                        and step < settings.num_steps):
                    write_samples(state, step)
        if not preempted:
            save(step)
            if write_samples and step > start_step:
                write_samples(state, step)
    finally:
        if bar is not None:
            bar.close()
        checkpoints.close()
        writer.close()
    return LoopResult(state=state, step=step, metrics=metrics_out, images_per_second=throughput,
                      preempted=preempted)
