"""The divergence guard: a finiteness flag computed in every jitted step, read before every save.

A loss or gradient that stops being finite poisons the parameters for good, and orbax keeps
only the last few checkpoints, so a few saves of a non-finite state would push out every good
one. Each step therefore returns `finite` (loss, gradient norm and the updated parameters' norm
all finite), and the loop reads the flags of all steps since its last look (no host round trip
per step) before it logs and before every checkpoint, preemption saves included. Policies:

  stop  the first non-finite step ends the run with an error naming the step and the quantity;
        the checkpoints on disk are all of finite states.
  skip  a non-finite step leaves parameters, EMA and optimiser state as they were (the step
        counter still advances, so the next step draws another batch and other noise); the run
        stops only after `max_in_a_row` such steps in a row.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

from clip_ddpm.errors import UserError

# The metrics a step must report, in the order an error names the first non-finite one.
GUARDED_METRICS = ("loss", "grad_norm", "param_norm")


class TrainingDivergedError(UserError):
    """Loss, gradient norm or parameters stopped being finite."""


def guard_update(old_state: Any, new_state: Any, metrics: dict[str, jax.Array], skip: bool
                 ) -> tuple[Any, dict[str, jax.Array]]:
    """Traced inside the jitted step: adds metrics["finite"] (1.0 or 0.0) and, with `skip`, keeps
    every field of `old_state` but its step counter when the step was not finite."""
    finite = jnp.all(jnp.stack([jnp.isfinite(metrics[name]) for name in GUARDED_METRICS]))
    if skip:
        kept = jax.tree_util.tree_map(lambda new, old: jnp.where(finite, new, old), new_state, old_state)
        new_state = kept.replace(step=new_state.step)
    return new_state, {**metrics, "finite": finite.astype(jnp.float32)}


class DivergenceGuard:
    """Host side: collects each step's flag (still on the device) and judges them when asked."""

    def __init__(self, policy: str = "stop", max_in_a_row: int = 10):
        if policy not in ("stop", "skip"):
            raise ValueError(f"unknown policy {policy!r}")
        self.policy = policy
        self.max_in_a_row = max_in_a_row
        self.skipped = 0  # non-finite steps skipped so far in this process
        self._in_a_row: list[int] = []
        self._pending: list[tuple[int, dict[str, jax.Array]]] = []

    def record(self, step: int, metrics: dict[str, jax.Array]) -> None:
        """Keeps the guarded metrics of the step that produced state `step` (no device sync)."""
        self._pending.append((step, {name: metrics[name] for name in ("finite", *GUARDED_METRICS)}))

    def check(self, last_good_checkpoint: int | None) -> None:
        """Raises TrainingDivergedError if the steps recorded since the last check call for it."""
        pending, self._pending = jax.device_get(self._pending), []
        newly_skipped = []
        for step, values in pending:
            if values["finite"]:
                self._in_a_row = []
                continue
            if self.policy == "stop":
                raise TrainingDivergedError(_stop_message(step, values, last_good_checkpoint))
            self._in_a_row.append(step)
            newly_skipped.append(step)
            self.skipped += 1
            if len(self._in_a_row) >= self.max_in_a_row:
                first = self._in_a_row[0]
                raise TrainingDivergedError(
                    f"{len(self._in_a_row)} steps in a row were not finite (steps {first} to {step}, their updates "
                    f"skipped; at step {step} {_quantity(values)}): training diverged; "
                    + _advice(last_good_checkpoint))
        if newly_skipped:
            logging.warning("skipped %d non-finite update(s) at step(s) %s (%d in this run so far)",
                            len(newly_skipped), ", ".join(map(str, newly_skipped[:10])), self.skipped)


def _quantity(values: dict[str, Any]) -> str:
    for name in GUARDED_METRICS:
        if not math.isfinite(float(values[name])):
            return f"{name} is {float(values[name])}"
    return "the update was not finite"


def _advice(last_good_checkpoint: int | None) -> str:
    where = ("the latest checkpoint (step %d) holds the last good state checked" % last_good_checkpoint
             if last_good_checkpoint is not None else "no checkpoint was written")
    return (f"{where}; run again on the same --workdir with a lower --learning_rate or --grad_clip (both may "
            "change when a run resumes), or check the data")


def _stop_message(step: int, values: dict[str, Any], last_good_checkpoint: int | None) -> str:
    return f"{_quantity(values)} at step {step}: training diverged; " + _advice(last_good_checkpoint)
