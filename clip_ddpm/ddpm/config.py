"""The DDPM run configuration: one dataclass, its absl flags, and its flagfile form.

Every field is a flag of the same name. `train` writes the resolved configuration to
`workdir/flags.txt` (a flagfile), so `sample` and a resumed run rebuild exactly the same model
and data without the user repeating anything.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from absl import flags

from clip_ddpm.diffusion.conditioning import DROP_MODES
from clip_ddpm.diffusion import SAMPLERS, SCHEDULES
from clip_ddpm.errors import UserError
from clip_ddpm.models.layers import CONV_IMPLS

CONDITIONS = ("none", "class", "embedding", "clip_image", "clip_text")
DTYPES = ("float32", "bfloat16")
FLAGS_FILENAME = "flags.txt"


def field(default: Any, help: str, enum: tuple[str, ...] | None = None) -> Any:
    factory = (lambda: default) if isinstance(default, tuple) else None
    metadata = {"help": help, "enum": enum}
    if factory:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a DDPM training run."""

    # Run.
    workdir: str = field("", "Directory for flags.txt, checkpoints, logs and samples (required).")
    seed: int = field(0, "Base random seed: parameters, data order, noise and masks derive from it.")
    num_steps: int = field(1000, "Total training steps (a resumed run continues up to this).")
    batch_size: int = field(64, "Global batch size, split over all devices of all hosts.")
    log_every: int = field(50, "Steps between logged scalars.")
    checkpoint_every: int = field(500, "Steps between checkpoints (one is always saved at the end).")
    sample_every: int = field(0, "Steps between sample grids (0: only at the end).")
    keep_checkpoints: int = field(3, "How many checkpoints to keep.")
    distributed: bool = field(False, "Call jax.distributed.initialize() for a multi-host run.")

    # Data.
    dataset: str = field("shapes", "Image source: shapes | tfds:NAME | folder:PATH.")
    image_size: int = field(32, "Image side in pixels (divisible by 4).")
    dataset_size: int = field(0, "Number of training images of a procedural source (0: its default).")
    holdout_pairs: tuple[str, ...] = field((), "Shapes classes ('red circle') left out of training.")
    tfds_data_dir: str = field("", "tensorflow-datasets data directory (empty: the tfds default).")
    random_flip: bool = field(False, "Random horizontal flips of training images.")

    # Conditioning.
    condition: str = field("class", "Context of the U-Net.", CONDITIONS)
    context_file: str = field("", "With --condition=embedding: a .npy [N, D] aligned with the dataset.")
    clip_model: str = field("", "CLIP for clip_image/clip_text: a hub id or a local directory.")
    clip_cache_dir: str = field("", "Root of the CLIP embedding cache (empty: $CLIP_DDPM_CACHE, else "
                                    "~/.cache/clip_ddpm).")
    context_drop: str = field("sample", "Classifier-free dropout: whole vector or elementwise.", DROP_MODES)
    context_drop_prob: float = field(0.1, "Probability that a context (or element) is dropped.")

    # Model.
    down_chs: tuple[int, ...] = field((256, 256, 512), "U-Net channels at the three resolutions.")
    t_embed_dim: int = field(8, "Sinusoidal time-embedding width.")
    dtype: str = field("float32", "Compute dtype (parameters stay float32).", DTYPES)
    conv_impl: str = field("auto", "Convolutions: XLA's, or lowered to matmuls (fast on CPU).", CONV_IMPLS)

    # Diffusion.
    timesteps: int = field(400, "Number of diffusion steps T.")
    schedule: str = field("linear", "Noise schedule.", SCHEDULES)
    beta_start: float = field(1e-4, "First beta of the linear schedule.")
    beta_end: float = field(0.02, "Last beta of the linear schedule.")

    # Optimiser.
    learning_rate: float = field(1e-3, "Peak AdamW learning rate.")
    warmup_steps: int = field(100, "Linear warm-up steps before the cosine decay.")
    weight_decay: float = field(0.0, "AdamW weight decay.")
    grad_clip: float = field(1.0, "Global gradient-norm clip (0: none).")
    ema_decay: float = field(0.999, "Decay of the exponential moving average of parameters.")

    # Sample grids written during training.
    sample_guidance: tuple[float, ...] = field((0.0, 1.0, 2.0), "Guidance weights w, one grid row each.")
    sample_columns: int = field(10, "Conditions (classes or dataset contexts) per grid row.")
    sampler: str = field("ddim", "Sampler for the grids written during training.", SAMPLERS)
    sampling_steps: int = field(50, "DDIM steps for those grids.")

    def validate(self) -> "Config":
        """Raises UserError naming the first flag whose value cannot work."""
        if not self.workdir:
            raise UserError("--workdir is required")
        if self.image_size < 8 or self.image_size % 4:
            raise UserError(f"--image_size must be a multiple of 4 and at least 8, got {self.image_size}")
        if len(self.down_chs) != 3 or min(self.down_chs) < 1:
            raise UserError(f"--down_chs needs three positive channel counts, got {self.down_chs}")
        if any(c % 32 for c in self.down_chs):
            raise UserError(f"--down_chs must be multiples of 32 (GroupNorm with 32 groups), got {self.down_chs}")
        for name in ("num_steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints",
                     "timesteps", "t_embed_dim"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.t_embed_dim % 2:
            raise UserError(f"--t_embed_dim must be even, got {self.t_embed_dim}")
        if not 0.0 <= self.context_drop_prob < 1.0:
            raise UserError(f"--context_drop_prob must be in [0, 1), got {self.context_drop_prob}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise UserError(f"--ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.learning_rate <= 0:
            raise UserError(f"--learning_rate must be positive, got {self.learning_rate}")
        if self.condition == "embedding" and not self.context_file:
            raise UserError("--condition=embedding needs --context_file")
        if self.condition in ("clip_image", "clip_text") and not self.clip_model:
            raise UserError(f"--condition={self.condition} needs --clip_model")
        if self.sampling_steps < 1 or self.sampling_steps > self.timesteps:
            raise UserError(f"--sampling_steps must be in [1, {self.timesteps}], got {self.sampling_steps}")
        return self

    @property
    def is_conditional(self) -> bool:
        return self.condition != "none"


# Fields that may differ when resuming a run: they change how long or how verbosely it runs,
# never what it computes.
RESUMABLE_FIELDS = frozenset({
    "workdir", "num_steps", "log_every", "checkpoint_every", "sample_every", "keep_checkpoints",
    "distributed", "sample_guidance", "sample_columns", "sampler", "sampling_steps", "clip_cache_dir",
})


def define_flags(flag_values: flags.FlagValues = flags.FLAGS, config_class: type = None) -> None:
    """Defines one absl flag per field of `config_class` (default Config) in `flag_values`.

    Any frozen dataclass whose fields are declared with `field` (help text, optional enum) and
    typed str, int, float, bool or tuple works, so every trainer shares this machinery.
    """
    for field in dataclasses.fields(config_class or Config):
        help_text, enum = field.metadata["help"], field.metadata["enum"]
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        if enum:
            flags.DEFINE_enum(field.name, default, enum, help_text, flag_values=flag_values)
        elif field.type == "bool":
            flags.DEFINE_bool(field.name, default, help_text, flag_values=flag_values)
        elif field.type == "int":
            flags.DEFINE_integer(field.name, default, help_text, flag_values=flag_values)
        elif field.type == "float":
            flags.DEFINE_float(field.name, default, help_text, flag_values=flag_values)
        elif field.type == "str":
            flags.DEFINE_string(field.name, default, help_text, flag_values=flag_values)
        else:  # tuples are comma-separated lists
            flags.DEFINE_list(field.name, [str(v) for v in default], help_text, flag_values=flag_values)


def _convert(field: dataclasses.Field, value: Any) -> Any:
    if field.type == "tuple[int, ...]":
        return tuple(int(v) for v in value)
    if field.type == "tuple[float, ...]":
        return tuple(float(v) for v in value)
    if field.type == "tuple[str, ...]":
        return tuple(str(v).strip() for v in value)
    return value


def from_flags(flag_values: flags.FlagValues = flags.FLAGS, config_class: type = None, **overrides: Any):
    """The config (default class Config) the parsed flags describe; bad list items are a UserError."""
    config_class = config_class or Config
    values = {}
    for field in dataclasses.fields(config_class):
        try:
            values[field.name] = _convert(field, flag_values[field.name].value)
        except ValueError as error:
            raise UserError(f"--{field.name}: {error}") from None
    values.update(overrides)
    return config_class(**values)


def to_flagfile_text(config: Any) -> str:
    """A config dataclass as flagfile lines (`--name=value`), readable by absl's --flagfile."""
    lines = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, bool):
            lines.append(f"--{field.name}" if value else f"--no{field.name}")
        elif isinstance(value, tuple):
            lines.append(f"--{field.name}={','.join(str(v) for v in value)}")
        else:
            lines.append(f"--{field.name}={value}")
    return "\n".join(lines) + "\n"


def read_flagfile(path: str, config_class: type = None):
    """Parses a flagfile (such as workdir/flags.txt) into a config (default class Config),
    independent of the global flags."""
    if not os.path.isfile(path):
        raise UserError(f"no flag file at {path}")
    flag_values = flags.FlagValues()
    define_flags(flag_values, config_class)
    try:
        flag_values(["clip_ddpm", f"--flagfile={path}"], known_only=False)
    except flags.Error as error:
        raise UserError(f"cannot read {path}: {error}") from None
    return from_flags(flag_values, config_class)


def resume_conflicts(saved: Any, requested: Any, resumable: frozenset[str] = RESUMABLE_FIELDS) -> list[str]:
    """Fields (other than the resumable ones) whose values differ between two configs."""
    return [f"--{f.name}: saved {getattr(saved, f.name)!r}, requested {getattr(requested, f.name)!r}"
            for f in dataclasses.fields(saved)
            if f.name not in resumable and getattr(saved, f.name) != getattr(requested, f.name)]
