"""Scalars of a run: always a JSON-lines file, plus TensorBoard event files when available.

TensorBoard writing goes through tensorboardX, imported lazily: a machine without it still
trains and keeps `metrics.jsonl`.
"""
from __future__ import annotations

import json
import os
import sys
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
            summary_writer = _import_summary_writer()
        except ImportError:
            logging.info("tensorboardX is not installed: scalars go to metrics.jsonl only")
        else:
            self._tb = summary_writer(os.path.join(workdir, "tensorboard"))

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


def _import_summary_writer() -> type:
    """tensorboardX's SummaryWriter, imported without PyTorch.

    tensorboardX imports PyTorch whenever it is installed, only so that it can accept torch
    tensors; this writer logs floats. Where PyTorch is installed and not yet loaded, that import
    is most of a short run's start-up (2.4 s of 2.6 s on a 2-core CPU, in every trainer process),
    so it is kept out while tensorboardX loads; a later `import torch` works as usual.
    """
    keep_out = "torch" not in sys.modules
    if keep_out:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError, which tensorboardX handles
    try:
        from tensorboardX import SummaryWriter
    finally:
        if keep_out:
            del sys.modules["torch"]
    return SummaryWriter
