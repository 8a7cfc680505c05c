"""The fields every training run has, declared once: run, data, compute dtype and optimiser.

The DDPM config (`ddpm.config.Config`) and the CLIP config (`clip.train.config.ClipTrainConfig`)
derive from `RunConfig` and add what is theirs; a derived config that wants another default for
a shared field uses `flags.new_default`, keeping the one help text.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from clip_ddpm.errors import UserError
from clip_ddpm.training.flags import field

DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What defines any training run in a workdir."""

    # Run.
    workdir: str = field("", "Directory for flags.txt, checkpoints, logs and outputs (required).")
    seed: int = field(0, "Base random seed: parameters, data order, noise and masks derive from it.")
    num_steps: int = field(1000, "Total training steps (a resumed run continues up to this).")
    batch_size: int = field(64, "Global batch size, split over all devices of all hosts.")
    log_every: int = field(50, "Steps between logged scalars.")
    checkpoint_every: int = field(500, "Steps between checkpoints (one is always saved at the end).")
    keep_checkpoints: int = field(3, "How many checkpoints to keep.")
    distributed: bool = field(False, "Call jax.distributed.initialize() for a multi-host run.")

    # Data.
    dataset: str = field("shapes", "Image source: shapes | tfds:NAME | folder:PATH.")
    image_size: int = field(32, "Image side in pixels.")
    dataset_size: int = field(0, "Number of training images of a procedural source (0: its default).")
    holdout_pairs: tuple[str, ...] = field((), "Shapes classes ('red circle') left out of training.")
    tfds_data_dir: str = field("", "tensorflow-datasets data directory (empty: the tfds default).")
    random_flip: bool = field(False, "Random horizontal flips of training images.")

    # Compute.
    dtype: str = field("float32", "Compute dtype (parameters stay float32).", DTYPES)

    # Optimiser.
    learning_rate: float = field(1e-3, "Peak AdamW learning rate.")
    warmup_steps: int = field(100, "Linear warm-up steps before the cosine decay.")
    lr_decay_steps: int = field(0, "Length of the warm-up and cosine decay (0: --num_steps of the run's first "
                                   "start). Kept on resume: a run extended with a larger --num_steps goes on "
                                   "at the final rate.")
    weight_decay: float = field(0.0, "AdamW weight decay.")
    grad_clip: float = field(1.0, "Global gradient-norm clip (0: none).")
    ema_decay: float = field(0.999, "Decay of the exponential moving average of parameters.")

    # Fields that may differ when a run is resumed: they change how long or how verbosely it
    # runs, never what it computes. Derived configs extend the set.
    RESUMABLE_FIELDS: ClassVar[frozenset[str]] = frozenset({
        "workdir", "num_steps", "log_every", "checkpoint_every", "keep_checkpoints", "distributed"})

    def resolved(self, saved: "RunConfig | None" = None) -> "RunConfig":
        """This config with what a run fixes at its first start filled in: --lr_decay_steps=0
        becomes the schedule length of the run being resumed (`saved`; for a run that predates
        the flag, its --num_steps), or else this --num_steps. So --num_steps may grow on resume
        without rebuilding the learning-rate schedule under the run's feet."""
        if self.lr_decay_steps:
            return self
        length = (saved.lr_decay_steps or saved.num_steps) if saved is not None else self.num_steps
        return dataclasses.replace(self, lr_decay_steps=length)

    def validate_run(self) -> None:
        """Raises UserError naming the first shared flag whose value cannot work."""
        if not self.workdir:
            raise UserError("--workdir is required")
        for name in ("num_steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints",
                     "image_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be positive, got {getattr(self, name)}")
        for name in ("dataset_size", "warmup_steps", "lr_decay_steps", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name} must not be negative, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise UserError(f"--learning_rate must be positive, got {self.learning_rate}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise UserError(f"--ema_decay must be in [0, 1), got {self.ema_decay}")
