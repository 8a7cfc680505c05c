"""Orbax checkpoints in a fixed `workdir/checkpoints`: save, keep N, restore the latest.

The folder name never changes between runs, so a restarted job finds and resumes its own
checkpoints instead of silently starting over in a new folder.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from absl import logging

from clip_ddpm.errors import UserError
from clip_ddpm.training.compilation import run_once_options

CHECKPOINT_DIRNAME = "checkpoints"


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIRNAME)


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """Shape/dtype/sharding skeleton of `tree` (arrays or ShapeDtypeStructs), for restoring."""
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


class Checkpoints:
    """A thin, typed face of orbax's CheckpointManager for one training state."""

    def __init__(self, workdir: str, max_to_keep: int = 3, create: bool = True):
        directory = checkpoint_dir(workdir)
        if not create and not os.path.isdir(directory):
            raise UserError(f"no checkpoints in {workdir} (expected {directory})")
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create)
        self._manager = ocp.CheckpointManager(directory, options=options)

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

    def restore_or_initialize(self, init_fn: Callable[[], Any], sharding: jax.sharding.Sharding) -> Any:
        """The latest saved state if there is one (the run resumes), else a fresh `init_fn()`,
        both laid out with `sharding`."""
        if self.latest_step() is None:
            return jax.jit(init_fn, out_shardings=sharding, compiler_options=run_once_options())()
        state = self.restore(abstract_like(jax.eval_shape(init_fn), sharding))
        logging.info("resumed from the checkpoint of step %d", int(state.step))
        return state

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
