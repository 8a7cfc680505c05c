"""Preemption: SIGTERM (how schedulers announce it) becomes one step at which every host stops.

One process turns SIGTERM into a flag. Several processes must leave the loop at the same step,
or the collective checkpoint save would wait forever for the hosts still training: there
JAX's preemption service (started by jax.distributed.initialize) catches SIGTERM on whichever
host gets it, tells the others through the coordinator, and `reached_preemption_sync_point`
answers True on every host at the same step, the one after the furthest any host had reached.
"""
from __future__ import annotations

import signal

import jax
from absl import logging


class PreemptionWatch:
    """Context manager; `reached(step)` is called after every step and says whether to stop."""

    def __init__(self):
        self.received = False
        self._previous = None
        self._installed = False

    def __enter__(self) -> "PreemptionWatch":
        # With several processes JAX's own SIGTERM handler must stay in place.
        if jax.process_count() == 1:
            try:
                self._previous = signal.signal(signal.SIGTERM, self._handle)
                self._installed = True
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        logging.warning("SIGTERM received: saving a checkpoint and stopping")
        self.received = True

    def reached(self, step: int) -> bool:
        """True when the run must stop after `step` (the same step on every process)."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            if multihost_utils.reached_preemption_sync_point(step):
                logging.warning("preemption notice: every process stops at step %d and saves a checkpoint", step)
                self.received = True
            return self.received
        return self.received

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
