"""Data parallelism over a 1-D ('data',) mesh of every device of every host.

This is today's form of a pmapped step: the step is jitted with the state replicated and the
batch sharded along 'data'; XLA inserts the gradient all-reduce (the pmean of a pmapped step).
Random draws are made at the global batch shape inside the jitted step, so every example gets
its own noise, no two devices draw the same, and the numbers do not depend on how many devices
share the work (under jit, values never depend on the sharding).
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from clip_ddpm.errors import UserError

DATA_AXIS = "data"


def configure_jax() -> None:
    """Process-wide settings the code relies on.

    jax_threefry_partitionable: a random draw sharded over devices is generated where it lives,
    each device computing only its own share without communicating; otherwise XLA generates
    it with all-gathers between devices. It changes no value's dependence on the device count
    (there is none under jit), but it does change which numbers a key gives, so every process
    of a run, and every run resumed, must set it alike. It is JAX's default since 0.5.
    """
    jax.config.update("jax_threefry_partitionable", True)


def initialize_distributed(enabled: bool) -> None:
    """Joins a multi-host job (coordinator and process ids come from the environment/cluster)."""
    if enabled:
        jax.distributed.initialize()


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named 'data' over `devices` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the 'data' axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """The global batch must split evenly over the devices."""
    n = mesh.devices.size
    if batch_size % n:
        raise UserError(f"--batch_size={batch_size} is not divisible by the {n} devices; "
                        f"use a multiple of {n}")


def check_dataset_fits_batch(local_examples: int, batch_size: int) -> None:
    """One global batch must fit in the dataset (all processes' slices together)."""
    if local_examples * jax.process_count() < batch_size:
        raise UserError(f"--batch_size={batch_size} is larger than the dataset ({local_examples} images)")


def place_replicated(tree: Any, mesh: Mesh) -> Any:
    """Puts host arrays on every device of the mesh (each process passes the same values)."""
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x)), tree)


def place_dataset(tree: Any, mesh: Mesh) -> Any:
    """Puts a whole in-memory dataset on the devices, for drawing batches there.

    One process: a replicated copy on each device, so a batch gather is local. Several
    processes: each passes only its own slice; the global array is sharded along 'data' and
    XLA moves rows between hosts when a batch needs them.
    """
    if jax.process_count() == 1:
        return place_replicated(tree, mesh)
    sharding = data_sharded(mesh)
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)
