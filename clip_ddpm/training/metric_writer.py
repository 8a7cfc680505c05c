"""Scalars of a run: always a JSON-lines file, plus TensorBoard event files when available.

TensorBoard writing goes through tensorboardX, imported lazily: a machine without it still
trains and keeps `metrics.jsonl`.
"""
from __future__ import annotations

import json
import os
from typing import Mapping

from absl import logging


class MetricWriter:
    def __init__(self, workdir: str, enabled: bool = True):
        self._enabled = enabled
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            logging.info("tensorboardX is not installed: scalars go to metrics.jsonl only")
        else:
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self._enabled:
            return
        self._jsonl.write(json.dumps({"step": step, **{k: float(v) for k, v in scalars.items()}}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for name, value in scalars.items():
                self._tb.add_scalar(name, float(value), step)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
