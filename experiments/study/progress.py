"""Progress lines and wall times of the study's phases.

One line per phase as it starts and ends (training runs add their own progress bars). The time
spent in each phase is added up over every invocation of the study in W/timings.json, so the
report of a study that was interrupted and resumed states the time it really took.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time

from .files import read_json, write_json

TIMINGS_FILENAME = "timings.json"


class Progress:
    def __init__(self, workdir: str, phases: tuple[str, ...], stream=None):
        self._path = os.path.join(workdir, TIMINGS_FILENAME)
        self._phases = phases
        self._stream = stream or sys.stdout
        self.timings = read_json(self._path, {"phases": {}, "runs": {}, "invocations": 0})
        self.timings["invocations"] += 1
        self._start = time.perf_counter()

    def note(self, message: str) -> None:
        print(f"[study]   {message}", file=self._stream, flush=True)

    @contextlib.contextmanager
    def phase(self, name: str):
        index = self._phases.index(name) + 1
        print(f"[study] phase {index}/{len(self._phases)}: {name}", file=self._stream, flush=True)
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            phases = self.timings["phases"]
            phases[name] = phases.get(name, 0.0) + seconds
            self.save()
            print(f"[study] phase {index}/{len(self._phases)}: {name} done in {seconds:.1f} s",
                  file=self._stream, flush=True)

    def record_run(self, name: str, steps: int, steps_per_second: float) -> None:
        """The speed of a training run (steps/s after compilation), for the report."""
        self.timings["runs"][name] = {"steps": steps, "steps_per_second": steps_per_second}
        self.save()

    def save(self) -> None:
        write_json(self._path, self.timings)
