"""Orbax checkpoints in a fixed `workdir/checkpoints`: save, keep N, restore the latest good one.

The folder name never changes between runs, so a restarted job finds and resumes its own
checkpoints instead of silently starting over in a new folder. A latest checkpoint that cannot
be read (a truncated file, a deleted folder, a save cut short by a crash) is moved to
`workdir/damaged_checkpoints/` (never deleted) and the run resumes from the step before it, with
a warning naming both; when no checkpoint can be read the run stops rather than start over.
"""
from __future__ import annotations

import functools
import os
import re
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from clip_ddpm.errors import UserError
from clip_ddpm.training.compilation import run_once_options

CHECKPOINT_DIRNAME = "checkpoints"
DAMAGED_DIRNAME = "damaged_checkpoints"
# Orbax writes a step into "<step>.orbax-checkpoint-tmp-<n>" and renames it when complete.
_UNFINISHED = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIRNAME)


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """Shape/dtype/sharding skeleton of `tree` (arrays or ShapeDtypeStructs), for restoring."""
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: " + ((str(error).strip().splitlines() or [""])[0][:200])


@functools.cache
def _write_each_array_once() -> None:
    """Orbax's CPU default splits every replicated array into one slice per device and copies
    each out with its own small jitted program (parallel writes pay off across many hosts'
    disks, not across the devices of one CPU): on 4 CPU devices that made a save of a small
    U-Net take seconds. Each array is written whole from its first replica instead, as orbax
    does on GPU."""
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)  # orbax warns that the override it was asked for happened
    try:
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
    finally:
        logging.set_verbosity(verbosity)


def _refuse_another_layout(error: Exception, step: int, directory: str) -> None:
    """UserError when orbax read the checkpoint of `step` and found arrays laid out otherwise than
    the state this version trains (written by a version whose training state differed: e.g. its
    optimiser kept one Adam moment per parameter array). Such a checkpoint is not damaged: it
    must not be set aside as damaged, nor the run resumed from an older one. Recognised by
    orbax's own message; were its wording to change, such checkpoints would take the damaged path,
    which, all of them failing alike, stops with an error and moves nothing. Every process reads
    the same checkpoint, so every process raises here, none waits at the collective below."""
    text = str(error)
    if "tree structures do not match" not in text:
        return
    where = next((line.strip().rstrip(":") for line in text.splitlines()[1:] if line.strip()), "")
    detail = f" (first difference in {where})" if where else ""
    raise UserError(f"the checkpoint of step {step} in {directory} holds a training state laid out differently "
                    f"from the one this version of clip_ddpm trains{detail}: it was written by another version. "
                    f"Resume it with that version, or train in a new --workdir; nothing was changed") from None


class Checkpoints:
    """A thin, typed face of orbax's CheckpointManager for one training state."""

    def __init__(self, workdir: str, max_to_keep: int = 3, create: bool = True):
        _write_each_array_once()
        directory = checkpoint_dir(workdir)
        if not create and not os.path.isdir(directory):
            raise UserError(f"no checkpoints in {workdir} (expected {directory})")
        self._workdir = workdir
        self._options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create)
        self._manager = ocp.CheckpointManager(directory, options=self._options)

    @property
    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any) -> None:
        """Starts an asynchronous save of `state` at `step` (a step already saved is skipped)."""
        if step in self.all_steps:
            return
        self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

    def restore(self, abstract_state: Any, step: int | None = None) -> Any:
        """The state saved at `step` (default: the latest), laid out as `abstract_state`."""
        steps = self.all_steps
        if step is None:
            step = self.latest_step()
            if step is None:
                raise UserError(f"no checkpoint found in {self._manager.directory}")
        elif step not in steps:
            raise UserError(f"no checkpoint at step {step}; available: {sorted(steps) or 'none'}")
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

    def restore_part(self, abstract_part: dict[str, Any], step: int) -> dict[str, Any]:
        """Only the top-level entries of the saved state named in `abstract_part` (e.g.
        {"ema_params": ...}), laid out as given: the rest (Adam's moments, ...) is never read,
        so sampling needs the memory of one parameter set, not of the whole training state."""
        if step not in self.all_steps:
            raise UserError(f"no checkpoint at step {step}; available: {sorted(self.all_steps) or 'none'}")
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_part)
        return self._manager.restore(step, args=ocp.args.PyTreeRestore(
            item=abstract_part, restore_args=restore_args, partial_restore=True))

    def restore_or_initialize(self, init_fn: Callable[[], Any], sharding: jax.sharding.Sharding) -> Any:
        """The latest good saved state if there is one (the run resumes), else a fresh
        `init_fn()`, both laid out with `sharding`."""
        self._set_aside_unfinished_saves()
        if self.latest_step() is None:
            return jax.jit(init_fn, out_shardings=sharding, compiler_options=run_once_options())()
        state = self._restore_latest_good(abstract_like(jax.eval_shape(init_fn), sharding))
        logging.info("resumed from the checkpoint of step %d", int(state.step))
        return state

    def _restore_latest_good(self, abstract_state: Any) -> Any:
        """Tries the saved steps from the latest down; damaged ones are set aside once a good
        one is found (all processes decide each step together)."""
        from clip_ddpm.training.parallel import gather_from_processes

        steps = sorted(self.all_steps, reverse=True)
        damaged: list[tuple[int, str]] = []
        for step in steps:
            state, problem = None, ""
            try:
                state = self.restore(abstract_state, step)
            except Exception as error:  # noqa: BLE001  (orbax and tensorstore raise many kinds)
                _refuse_another_layout(error, step, self._manager.directory)
                problem = _first_line(error)
            if gather_from_processes(int(not problem)).all():
                if damaged:
                    self._set_aside([s for s, _ in damaged])
                    for bad, problem in damaged:
                        logging.warning("the checkpoint of step %d cannot be restored (%s); it was moved to %s and "
                                        "the run resumes from step %d", bad, problem,
                                        os.path.join(self._workdir, DAMAGED_DIRNAME), step)
                return state
            damaged.append((step, problem or "damaged on another process"))
        shown = "; ".join(f"step {s}: {p}" for s, p in damaged[:3])
        raise UserError(f"no checkpoint in {self._manager.directory} can be restored ({shown}); nothing was "
                        f"changed there: repair or move the checkpoints folder away to start the run afresh")

    def _set_aside(self, steps: list[int], names: list[str] | None = None) -> None:
        """Moves step folders (or the given folder names) to workdir/damaged_checkpoints, then
        reopens the manager so it forgets them (process 0 moves, the others wait)."""
        names = names if names is not None else [str(step) for step in steps]
        if jax.process_index() == 0:
            target = os.path.join(self._workdir, DAMAGED_DIRNAME)
            os.makedirs(target, exist_ok=True)
            for name in names:
                destination, i = os.path.join(target, name), 0
                while os.path.exists(destination):
                    i += 1
                    destination = os.path.join(target, f"{name}.{i}")
                os.replace(os.path.join(self._manager.directory, name), destination)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("damaged checkpoints set aside")
        self._manager.close()
        self._manager = ocp.CheckpointManager(checkpoint_dir(self._workdir), options=self._options)

    def _set_aside_unfinished_saves(self) -> None:
        """A save cut short (its temporary folder is still there) is reported and set aside."""
        directory = checkpoint_dir(self._workdir)
        names = os.listdir(directory) if os.path.isdir(directory) else []
        unfinished = sorted(name for name in names if _UNFINISHED.match(name))
        if jax.process_count() > 1:  # what process 0 saw decides, as it is the one that moves them
            from jax.experimental import multihost_utils
            if not int(multihost_utils.broadcast_one_to_all(np.int32(len(unfinished)))):
                return
        elif not unfinished:
            return
        latest = self.latest_step()
        self._set_aside([], unfinished)
        steps = ", ".join(_UNFINISHED.match(name).group(1) for name in unfinished)
        if unfinished:  # process 0's names (the others may have listed the folder after the move)
            logging.warning("the save of step %s was cut short (half-written, moved to %s); the run resumes from %s",
                            steps, os.path.join(self._workdir, DAMAGED_DIRNAME),
                            "the start" if latest is None else f"step {latest}")

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
