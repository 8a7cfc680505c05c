"""Data parallelism over a 1-D ('data',) mesh of every device of every host.

This is today's form of a pmapped step: the step is jitted with the state replicated and the
batch sharded along 'data'; XLA inserts the gradient all-reduce (the pmean of a pmapped step).
Random draws are made at the global batch shape inside the jitted step, so every example gets
its own noise, no two devices draw the same, and the numbers do not depend on how many devices
share the work (under jit, values never depend on the sharding).
"""
from __future__ import annotations

import contextlib
import itertools
import json
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from absl import logging
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


def initialize_distributed(enabled: bool, coordinator_address: str = "", num_processes: int = 0,
                           process_id: int = -1) -> None:
    """Joins a multi-host job. Unset values (empty, 0, -1) are left to JAX, which reads
    $JAX_COORDINATOR_ADDRESS and detects SLURM, Open MPI, Kubernetes and Cloud TPU jobs."""
    if not enabled:
        return
    if jax.distributed.is_initialized():  # a caller (or an earlier run in this process) already joined
        return
    try:
        jax.distributed.initialize(coordinator_address=coordinator_address or None,
                                   num_processes=num_processes or None,
                                   process_id=None if process_id < 0 else process_id)
    except (ValueError, RuntimeError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(f"--distributed: cannot join the multi-host job ({first}); give --coordinator_address, "
                        "--num_processes and --process_id, or run under a scheduler JAX detects") from None


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


def rows_per_process(local_rows: int) -> int:
    """How many of its `local_rows` examples each process puts on the devices.

    A global array sharded along 'data' needs as many rows from every process, a multiple of
    its local device count; process slices differ by at most one row, so with several processes
    every slice is cut to the largest such size the smallest slice allows. One process keeps all.
    """
    if jax.process_count() == 1:
        return local_rows
    per_device = int(gather_from_processes(np.int64(local_rows)).min()) // jax.local_device_count()
    return per_device * jax.local_device_count()


def check_dataset_fits_batch(local_examples: int, batch_size: int) -> None:
    """One global batch must fit in the dataset (all processes' slices together)."""
    total = rows_per_process(local_examples) * jax.process_count()
    if total < batch_size:
        raise UserError(f"--batch_size={batch_size} is larger than the dataset ({total} images)")


def _global_array(sharding: NamedSharding, x: Any, global_shape: tuple[int, ...] | None = None) -> jax.Array:
    """One global array from this process's part of it; a typed PRNG key travels as its raw
    key data (numpy cannot hold key dtypes) and is wrapped back on the devices."""
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = _global_array(sharding, jax.random.key_data(x), None if global_shape is None
                             else global_shape + jax.random.key_data(x).shape[x.ndim:])
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, x, x.shape if global_shape is None else global_shape)


def place_replicated(tree: Any, mesh: Mesh) -> Any:
    """Puts host arrays (or PRNG keys) on every device of the mesh; each process passes the
    same values."""
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree_util.tree_map(lambda x: _global_array(sharding, x), tree)


def gather_from_processes(value: Any) -> np.ndarray:
    """[process_count, ...]: `value` (a host array or scalar, of one shape everywhere) from every
    process, in process order; every process gets the same answer."""
    value = np.asarray(value)
    if jax.process_count() == 1:
        return value[None]
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(value))


def gather_strings(local: Sequence[str]) -> tuple[str, ...]:
    """Every process's strings, concatenated in process order (one process: `local` itself):
    what a step that must see the whole dataset's text, such as training a tokenizer, needs."""
    if jax.process_count() == 1:
        return tuple(local)
    encoded = np.frombuffer(json.dumps(list(local)).encode("utf-8"), np.uint8)
    lengths = gather_from_processes(np.int64(len(encoded)))
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:len(encoded)] = encoded
    everyone = gather_from_processes(padded)
    return tuple(text for row, n in zip(everyone, lengths)
                 for text in json.loads(row[:int(n)].tobytes().decode("utf-8")))


def place_dataset(tree: Any, mesh: Mesh) -> Any:
    """Puts a whole in-memory dataset on the devices, for drawing batches there.

    One process: a replicated copy on each device, so a batch gather is local. Several
    processes: each passes only its own slice, and the global array, sharded along 'data', is
    the slices one after the other (cut to `rows_per_process`, the rows dropped logged); XLA
    moves rows between hosts when a batch needs them.
    """
    if jax.process_count() == 1:
        return place_replicated(tree, mesh)
    local_rows = len(jax.tree_util.tree_leaves(tree)[0])
    keep = rows_per_process(local_rows)
    dropped = int(gather_from_processes(np.int64(local_rows - keep)).sum())
    if dropped:
        logging.warning("dropped %d of %d examples so that every process holds %d (a multiple of its %d devices)",
                        dropped, keep * jax.process_count() + dropped, keep, jax.local_device_count())
    sharding = data_sharded(mesh)
    rows = keep * jax.process_count()
    return jax.tree_util.tree_map(
        lambda x: _global_array(sharding, np.asarray(x)[:keep], (rows,) + np.shape(x)[1:]), tree)


def global_max(value: int) -> int:
    """The largest of every process's `value` (the same answer on every process), so a check
    that depends on local data is decided alike everywhere instead of stopping one host while
    the others wait for it at a collective."""
    return int(gather_from_processes(np.int64(value)).max())


_barriers = itertools.count()


def wait_for_every_process(what: str, timeout_s: int = 3600) -> None:
    """Returns once every process has called it (with the same `what`), via the coordinator.

    Device collectives between processes on CPU (gloo) give up when a peer is 30 s late, and a
    program compiled on every host takes as long as it takes on the slowest: so a jitted step is
    compiled first, then the processes meet here, then it runs. One process: nothing to wait for.
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed

    name = f"clip_ddpm:{next(_barriers)}:{what}"
    client = distributed.global_state.client
    if client is None or not hasattr(client, "wait_at_barrier"):
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)
        return
    client.wait_at_barrier(name, timeout_in_ms=timeout_s * 1000)


def compiled_for_every_process(jitted: Any, *args: Any) -> Any:
    """`jitted` compiled for `args`, once every process has compiled it (see
    `wait_for_every_process`), so its first run finds all of them ready."""
    compiled = jitted.lower(*args).compile()
    wait_for_every_process("compiled")
    return compiled


@contextlib.contextmanager
def decided_together(what: str) -> Iterator[None]:
    """Runs a check that may fail on some processes only (local data, a file only the chief
    writes) and makes its outcome everyone's: a process whose check raised UserError re-raises
    it, and the others raise one naming that process, instead of waiting for it forever at the
    next collective. With one process it only runs the check."""
    if jax.process_count() == 1:
        yield
        return
    try:
        yield
    except UserError:
        gather_from_processes(np.int32(0))
        raise
    oks = gather_from_processes(np.int32(1))
    if not oks.all():
        failed = ", ".join(str(i) for i in np.flatnonzero(oks == 0))
        raise UserError(f"{what} failed on process {failed} (its log says why)")
