"""The contrastive CLIP run configuration: the shared run fields plus tokenizer, towers and export.

It uses the same flag machinery as the DDPM trainer (`training.flags`), so `train_clip` writes
`workdir/flags.txt` and a resumed run is checked against it the same way. Importing it loads no
numerical library, so the command line parses its flags before anything heavy is imported.
"""
from __future__ import annotations

import dataclasses
import os
from typing import ClassVar

from clip_ddpm.errors import UserError
from clip_ddpm.training.flags import field, new_default
from clip_ddpm.training.run_config import RunConfig

EXPORT_DIRNAME = "clip"
ATTENTION_INITS = ("openai", "mimetic")
POSITION_INITS = ("openai", "sincos")
MIN_VOCAB_SIZE = 2 * 256 + 2  # a CLIP byte-level vocabulary: 256 bytes, with and without </w>, 2 specials
# CLIP clips its temperature at 100 so the logits cannot blow up and destabilise training.
MAX_LOGIT_SCALE = 100.0


@dataclasses.dataclass(frozen=True)
class ClipTrainConfig(RunConfig):
    """Everything that defines a contrastive CLIP training run."""

    num_steps: int = new_default(RunConfig, "num_steps", 2000)
    batch_size: int = new_default(RunConfig, "batch_size", 256)
    learning_rate: float = new_default(RunConfig, "learning_rate", 5e-4)
    weight_decay: float = new_default(RunConfig, "weight_decay", 0.1)

    eval_size: int = field(0, "Test images of a procedural source for the evaluation, and validation images "
                              "for choosing the exported parameters (0: the source's default).")
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

    # Evaluation and export.
    eval_batch_size: int = field(256, "Images or texts per evaluation batch.")
    export_dir: str = field("", "Where the trained model is saved for transformers (empty: workdir/clip).")

    RESUMABLE_FIELDS: ClassVar[frozenset[str]] = RunConfig.RESUMABLE_FIELDS | {"eval_batch_size"}

    @property
    def export_path(self) -> str:
        return self.export_dir or os.path.join(self.workdir, EXPORT_DIRNAME)

    def validate(self) -> "ClipTrainConfig":
        """Raises UserError naming the first flag whose value cannot work."""
        self.validate_run()
        for name in ("patch_size", "vision_width", "vision_layers", "vision_heads",
                     "text_width", "text_layers", "text_heads", "mlp_ratio", "projection_dim",
                     "eval_batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be positive, got {getattr(self, name)}")
        for name in ("eval_size", "random_shift"):
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
        return self
