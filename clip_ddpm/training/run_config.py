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
NONFINITE_POLICIES = ("stop", "skip")


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
    distributed: bool = field(False, "Join a multi-host JAX job (jax.distributed.initialize); every host runs "
                                     "the same command.")
    coordinator_address: str = field("", "With --distributed: host:port of process 0's coordinator (empty: "
                                          "$JAX_COORDINATOR_ADDRESS or the scheduler's).")
    num_processes: int = field(0, "With --distributed: number of processes in the job (0: from the scheduler).")
    process_id: int = field(-1, "With --distributed: this process's index, 0 to --num_processes - 1 (-1: from "
                                "the scheduler).")

    # Data.
    dataset: str = field("shapes", "Image source: shapes | tfds:NAME | folder:PATH.")
    image_size: int = field(32, "Image side in pixels.")
    dataset_size: int = field(0, "Number of training images of a procedural source (0: its default).")
    holdout_pairs: tuple[str, ...] = field((), "Shapes classes ('red circle') left out of training.")
    tfds_data_dir: str = field("", "tensorflow-datasets data directory (empty: the tfds default).")
    test_fraction: float = field(0.0, "With --dataset=folder:PATH: the fraction of each class's images held out "
                                      "as the 'test' split (0: none).")
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
    adam_eps: float = field(1e-8, "Adam's epsilon. A larger one (1e-3) stops Adam from turning rounding noise in "
                                  "gradients that should be zero into full-size steps.")
    ema_decay: float = field(0.999, "Decay of the exponential moving average of parameters.")

    # Divergence.
    on_nonfinite: str = field("stop", "When a step's loss, gradient norm or parameter norm is not finite: stop "
                                      "with an error, or skip that update.", NONFINITE_POLICIES)
    max_nonfinite_steps: int = field(10, "With --on_nonfinite=skip: stop after this many non-finite steps in a row.")

    # Fields that may differ when a run is resumed: they change how long, how verbosely or where
    # it runs, and the learning rate and clip that a diverged run may lower to continue; never
    # the model or its data. Derived configs extend the set.
    RESUMABLE_FIELDS: ClassVar[frozenset[str]] = frozenset({
        "workdir", "num_steps", "log_every", "checkpoint_every", "keep_checkpoints", "distributed",
        "coordinator_address", "num_processes", "process_id", "learning_rate", "grad_clip", "on_nonfinite",
        "max_nonfinite_steps"})

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
                     "image_size", "max_nonfinite_steps"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be positive, got {getattr(self, name)}")
        for name in ("dataset_size", "warmup_steps", "lr_decay_steps", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name} must not be negative, got {getattr(self, name)}")
        if self.adam_eps <= 0:
            raise UserError(f"--adam_eps must be positive, got {self.adam_eps}")
        if self.learning_rate <= 0:
            raise UserError(f"--learning_rate must be positive, got {self.learning_rate}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise UserError(f"--ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise UserError(f"--test_fraction must be in [0, 1), got {self.test_fraction}")
        job = [f"--{name}" for name, unset in (("coordinator_address", ""), ("num_processes", 0),
                                               ("process_id", -1)) if getattr(self, name) != unset]
        if job and not self.distributed:
            raise UserError(f"{', '.join(job)} only mean something with --distributed")
        if self.num_processes < 0 or self.process_id < -1 or (
                self.num_processes and self.process_id >= self.num_processes):
            raise UserError(f"--process_id={self.process_id} is not in [0, --num_processes={self.num_processes})")
