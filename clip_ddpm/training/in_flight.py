"""A bound on how far the host runs ahead of the devices when it dispatches training steps.

JAX dispatches a jitted step and returns at once, so a loop that touches the host only every
`log_every` steps can queue dozens of steps. On the CPU that is not harmless when the step is
split over several XLA devices: the runtime lets each device hold at most 32 programs in flight,
and a dispatch past that limit blocks one of the runtime's threads, of which there are as many
as cores or devices, whichever is more. A blocked dispatch on one thread and, on the other, a
device waiting at a collective for a device whose part of the program now has no thread to run
on, is a deadlock that XLA ends by aborting the process 40 s later. Waiting for the step
dispatched `limit` steps earlier keeps the queue short (the devices still never wait for the
host) and the runtime's threads free.
"""
from __future__ import annotations

import collections
from typing import Any

import jax

# Well under the runtime's 32 programs per device, with room for what else a step dispatches.
STEPS_IN_FLIGHT = 8


class StepsInFlight:
    """Call `dispatched(outputs)` after each step; it waits for the step `limit` steps back."""

    def __init__(self, limit: int = STEPS_IN_FLIGHT):
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self._pending: collections.deque[Any] = collections.deque()

    def dispatched(self, outputs: Any) -> None:
        self._pending.append(outputs)
        while len(self._pending) > self.limit:
            jax.block_until_ready(self._pending.popleft())
