"""On the CPU, one XLA device per core: decided by each command before JAX starts its backend.

XLA:CPU runs each device's program on a thread of its own, and parallelises within an operation
only in part, so one device leaves cores idle during the small convolutions of a diffusion
U-Net. Split into one device per core, the CPU becomes a data-parallel mesh like a multi-GPU
machine: each device takes its share of the batch, the gradients are summed across them. On two
cores, the study's train step (down_chs 32,32,64, batch 16, 32 px) went from 40 to 49 img/s.

The count must divide every batch the command splits over the mesh (the training batch; samplers
and encoders pad), and each device holds its own copy of the parameters and optimiser state, so
it is at most `MAX_CPU_DEVICES`. A device count already given in $XLA_FLAGS is the user's choice
and is kept (`--xla_force_host_platform_device_count=1` keeps one device). The flag only shapes
the CPU backend: on a GPU or TPU machine the accelerators are the mesh as before.
"""
from __future__ import annotations

import os
from typing import Sequence

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
MAX_CPU_DEVICES = 8


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_device_count(cores: int, batch_sizes: Sequence[int]) -> int:
    """The most devices, at most `cores` and MAX_CPU_DEVICES, that split every batch evenly."""
    limit = max(1, min(cores, MAX_CPU_DEVICES))
    return max(n for n in range(1, limit + 1) if all(b % n == 0 for b in batch_sizes if b > 0))


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge
    except ImportError:
        return False
    started = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(started and started())


def split_cpu_into_devices(batch_sizes: Sequence[int] = (), cores: int | None = None) -> int | None:
    """Adds the device-count flag to $XLA_FLAGS for this process (one device per core of
    `cores`, default `usable_cores()`); returns the count, or None when the flag was left alone
    (a count already set, or JAX's backends already started, when it could no longer act)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if DEVICE_COUNT_FLAG in flags or _backends_started():
        return None
    count = cpu_device_count(usable_cores() if cores is None else cores, batch_sizes)
    if count > 1:
        os.environ["XLA_FLAGS"] = f"{flags} {DEVICE_COUNT_FLAG}={count}".strip()
    return count
