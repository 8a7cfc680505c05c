"""The contrastive CLIP run configuration: one dataclass whose fields are the CLI's flags.

It shares the DDPM trainer's flag machinery (`config.define_flags`, `from_flags`, flagfiles),
so `train_clip` writes `workdir/flags.txt` and a resumed run is checked against it the same way.
"""
from __future__ import annotations

import dataclasses
import os

from clip_ddpm.clip.train.step import MAX_LOGIT_SCALE
from clip_ddpm.ddpm.config import DTYPES, field
from clip_ddpm.errors import UserError

EXPORT_DIRNAME = "clip"
ATTENTION_INITS = ("openai", "mimetic")
POSITION_INITS = ("openai", "sincos")
MIN_VOCAB_SIZE = 2 * 256 + 2  # a CLIP byte-level vocabulary: 256 bytes, with and without </w>, 2 specials


@dataclasses.dataclass(frozen=True)
class ClipTrainConfig:
    """Everything that defines a contrastive CLIP training run."""

    # Run.
    workdir: str = field("", "Directory for flags.txt, tokenizer, checkpoints, logs and eval.json (required).")
    seed: int = field(0, "Base random seed: parameters, data order and augmentation derive from it.")
    num_steps: int = field(2000, "Total training steps (a resumed run continues up to this).")
    batch_size: int = field(256, "Global batch of image-caption pairs, split over all devices.")
    log_every: int = field(50, "Steps between logged scalars.")
    checkpoint_every: int = field(500, "Steps between checkpoints (one is always saved at the end).")
    keep_checkpoints: int = field(3, "How many checkpoints to keep.")
    distributed: bool = field(False, "Call jax.distributed.initialize() for a multi-host run.")

    # Data.
    dataset: str = field("shapes", "Captioned images: shapes | tfds:NAME | folder:PATH.")
    image_size: int = field(32, "Image side in pixels, also the vision tower's input size.")
    dataset_size: int = field(0, "Training images of a procedural source (0: its default).")
    eval_size: int = field(0, "Test images of a procedural source for the evaluation (0: its default).")
    holdout_pairs: tuple[str, ...] = field((), "Shapes classes ('red circle') kept out of training and test.")
    tfds_data_dir: str = field("", "tensorflow-datasets data directory (empty: the tfds default).")
    random_flip: bool = field(False, "Random horizontal flips (every shapes caption stays true).")
    random_shift: int = field(0, "Random translations of up to this many pixels (0: none).")

    # Tokenizer.
    tokenizer: str = field("", "A CLIP tokenizer directory to use (empty: train one on the training captions).")
    vocab_size: int = field(1024, "BPE vocabulary size asked for (a small corpus may give fewer merges).")
    context_length: int = field(24, "Text tower positions; every caption must fit.")

    # Model.
    patch_size: int = field(4, "Vision patch side in pixels (divides --image_size).")
    vision_width: int = field(128, "Vision transformer width.")
    vision_layers: int = field(4, "Vision transformer blocks.")
    vision_heads: int = field(4, "Vision attention heads.")
    text_width: int = field(128, "Text transformer width.")
    text_layers: int = field(4, "Text transformer blocks.")
    text_heads: int = field(4, "Text attention heads.")
    vision_attention_init: str = field("mimetic", "Vision attention weights at the start: OpenAI's random "
                                       "draw, or mimetic (learns image structure faster).", ATTENTION_INITS)
    vision_position_init: str = field("sincos", "Vision position embeddings at the start: OpenAI's small "
                                      "random draw, or 2-D sine-cosine codes (nearby patches alike).",
                                      POSITION_INITS)
    mlp_ratio: int = field(4, "MLP width as a multiple of the transformer width.")
    projection_dim: int = field(128, "Width of the shared image-text embedding space.")
    init_temperature: float = field(0.07, "Softmax temperature at the start (CLIP's 0.07); it is learnt, "
                                    "down to 0.01. A lower start weights the hardest negatives more.")
    dtype: str = field("float32", "Compute dtype (parameters stay float32).", DTYPES)

    # Optimiser.
    learning_rate: float = field(5e-4, "Peak AdamW learning rate.")
    warmup_steps: int = field(100, "Linear warm-up steps before the cosine decay.")
    weight_decay: float = field(0.1, "AdamW weight decay on weight matrices (not biases, norms, temperature).")
    grad_clip: float = field(1.0, "Global gradient-norm clip (0: none).")
    ema_decay: float = field(0.999, "Decay of the exponential moving average of parameters.")

    # Evaluation and export.
    eval_batch_size: int = field(256, "Images or texts per evaluation batch.")
    export_dir: str = field("", "Where the trained model is saved for transformers (empty: workdir/clip).")

    @property
    def export_path(self) -> str:
        return self.export_dir or os.path.join(self.workdir, EXPORT_DIRNAME)

    def validate(self) -> "ClipTrainConfig":
        """Raises UserError naming the first flag whose value cannot work."""
        if not self.workdir:
            raise UserError("--workdir is required")
        for name in ("num_steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints",
                     "image_size", "patch_size", "vision_width", "vision_layers", "vision_heads",
                     "text_width", "text_layers", "text_heads", "mlp_ratio", "projection_dim",
                     "eval_batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be positive, got {getattr(self, name)}")
        for name in ("dataset_size", "eval_size", "random_shift", "warmup_steps", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name} must not be negative, got {getattr(self, name)}")
        if self.image_size % self.patch_size:
            raise UserError(f"--patch_size={self.patch_size} does not divide --image_size={self.image_size}")
        for tower in ("vision", "text"):
            width, heads = getattr(self, f"{tower}_width"), getattr(self, f"{tower}_heads")
            if width % heads:
                raise UserError(f"--{tower}_width={width} is not a multiple of --{tower}_heads={heads}")
        if self.vision_position_init == "sincos" and self.vision_width % 4:
            raise UserError(f"--vision_position_init=sincos needs --vision_width divisible by 4, "
                            f"got {self.vision_width}")
        if self.vocab_size < MIN_VOCAB_SIZE:
            raise UserError(f"--vocab_size must be at least {MIN_VOCAB_SIZE} (every byte twice, plus the start "
                            f"and end tokens), got {self.vocab_size}")
        if self.context_length < 3:
            raise UserError(f"--context_length must be at least 3, got {self.context_length}")
        if not 1.0 / MAX_LOGIT_SCALE <= self.init_temperature <= 1.0:
            raise UserError(f"--init_temperature must be in [{1.0 / MAX_LOGIT_SCALE}, 1], got {self.init_temperature}")
        if self.learning_rate <= 0:
            raise UserError(f"--learning_rate must be positive, got {self.learning_rate}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise UserError(f"--ema_decay must be in [0, 1), got {self.ema_decay}")
        return self


# Fields that may differ when resuming: they change how long or how verbosely the run goes,
# or how it is evaluated, never what the trained parameters are.
RESUMABLE_FIELDS = frozenset({
    "workdir", "num_steps", "log_every", "checkpoint_every", "keep_checkpoints", "distributed",
    "eval_batch_size",
})
