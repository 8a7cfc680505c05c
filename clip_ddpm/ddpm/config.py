"""The DDPM run configuration: the shared run fields plus conditioning, U-Net, diffusion and grids.

Every field is a flag of the same name (see `training.flags`). `train` writes the resolved
configuration to `workdir/flags.txt`, so `sample` and a resumed run rebuild exactly the same
model and data without the user repeating anything.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from clip_ddpm.diffusion.conditioning import CONTEXT_TRANSFORMS, DROP_MODES
from clip_ddpm.diffusion.forward import LOSS_WEIGHTINGS
from clip_ddpm.diffusion.parameterization import PREDICTIONS
from clip_ddpm.diffusion.samplers import SAMPLERS
from clip_ddpm.diffusion.schedules import SCHEDULES
from clip_ddpm.errors import UserError
from clip_ddpm.models.layers import CONV_IMPLS
from clip_ddpm.training.flags import field
from clip_ddpm.training.run_config import RunConfig

CONDITIONS = ("none", "class", "embedding", "clip_image", "clip_text")


@dataclasses.dataclass(frozen=True)
class Config(RunConfig):
    """Everything that defines a DDPM training run."""

    sample_every: int = field(0, "Steps between sample grids (0: only at the end).")

    # Conditioning.
    condition: str = field("class", "Context of the U-Net.", CONDITIONS)
    context_file: str = field("", "With --condition=embedding: a .npy [N, D] aligned with the dataset.")
    clip_model: str = field("", "CLIP for clip_image/clip_text: a hub id or a local directory.")
    clip_revision: str = field("", "With a hub id as --clip_model: the branch, tag or commit to use (empty: main).")
    clip_cache_dir: str = field("", "Root of the CLIP embedding cache (empty: $CLIP_DDPM_CACHE, else "
                                    "~/.cache/clip_ddpm).")
    clip_image_size: int = field(0, "Pixel size at which CLIP embeds the training images (--condition=clip_image, and "
                                    "the image mean of gapshift): the same examples loaded at that size, so a DDPM "
                                    "trained at low resolution is conditioned on what its CLIP sees at its own. "
                                    "0: the DDPM's --image_size, resized by CLIP's preprocessing.")
    context_drop: str = field("sample", "Classifier-free dropout: whole vector or elementwise.", DROP_MODES)
    context_drop_prob: float = field(0.1, "Probability that a context (or element) is dropped.")
    context_transform: str = field("none", "Gap-closing map of CLIP contexts: LAFITE noise, or centring "
                                           "each modality on its training mean (gapshift).", CONTEXT_TRANSFORMS)
    lafite_xi: float = field(0.1, "With --context_transform=lafite: the noise level xi in [0, 1].")
    gap_noise_std: float = field(0.0, "With --context_transform=gapshift: per-dimension Gaussian noise "
                                      "added to training contexts.")

    # Model.
    down_chs: tuple[int, ...] = field((256, 256, 512), "U-Net channels at the three resolutions.")
    t_embed_dim: int = field(8, "Sinusoidal time-embedding width.")
    conv_impl: str = field("auto", "Convolutions: XLA's, or lowered to matmuls (fast on CPU).", CONV_IMPLS)

    # Diffusion.
    timesteps: int = field(400, "Number of diffusion steps T.")
    schedule: str = field("linear", "Noise schedule.", SCHEDULES)
    beta_start: float = field(1e-4, "First beta of the linear schedule.")
    beta_end: float = field(0.02, "Last beta of the linear schedule.")
    loss_weighting: str = field("uniform", "Weights of the timesteps in the ε loss: uniform (the course), "
                                           "min_snr (min(SNR, gamma)/SNR) or clipped_snr (clip(SNR, 1, gamma)/SNR).",
                                LOSS_WEIGHTINGS)
    min_snr_gamma: float = field(5.0, "With --loss_weighting=min_snr or clipped_snr: gamma.")
    prediction: str = field("eps", "What the U-Net outputs: the noise (the course), the clean image x0, or "
                                   "v; the loss is the ε loss of the ε it implies.", PREDICTIONS)

    # Sample grids written during training.
    sample_guidance: tuple[float, ...] = field((0.0, 1.0, 2.0), "Guidance weights w, one grid row each.")
    sample_columns: int = field(10, "Conditions (classes or dataset contexts) per grid row (0: no grids).")
    sampler: str = field("ddim", "Sampler for the grids written during training.", SAMPLERS)
    sampling_steps: int = field(50, "DDIM steps for those grids.")
    clip_denoised: bool = field(False, "Clip the sampler's estimate of x0 to [-1, 1] at every step, in "
                                       "these grids and in clip_ddpm.sample (the course does not).")

    RESUMABLE_FIELDS: ClassVar[frozenset[str]] = RunConfig.RESUMABLE_FIELDS | {
        "sample_every", "sample_guidance", "sample_columns", "sampler", "sampling_steps", "clip_denoised",
        "clip_cache_dir"}

    def validate(self) -> "Config":
        """Raises UserError naming the first flag whose value cannot work."""
        self.validate_run()
        if self.image_size < 8 or self.image_size % 4:
            raise UserError(f"--image_size must be a multiple of 4 and at least 8, got {self.image_size}")
        if len(self.down_chs) != 3 or min(self.down_chs) < 1:
            raise UserError(f"--down_chs needs three positive channel counts, got {self.down_chs}")
        if any(c % 32 for c in self.down_chs):
            raise UserError(f"--down_chs must be multiples of 32 (GroupNorm with 32 groups), got {self.down_chs}")
        for name in ("timesteps", "t_embed_dim"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.t_embed_dim % 2:
            raise UserError(f"--t_embed_dim must be even, got {self.t_embed_dim}")
        if not 0.0 <= self.context_drop_prob < 1.0:
            raise UserError(f"--context_drop_prob must be in [0, 1), got {self.context_drop_prob}")
        if self.condition == "embedding" and not self.context_file:
            raise UserError("--condition=embedding needs --context_file")
        if self.context_transform == "lafite" and self.condition not in ("embedding", "clip_image", "clip_text"):
            raise UserError(f"--context_transform=lafite needs context vectors, not --condition={self.condition}")
        if self.context_transform == "gapshift" and self.condition not in ("clip_image", "clip_text"):
            raise UserError(f"--context_transform=gapshift needs a CLIP condition, not --condition={self.condition}")
        if not 0.0 <= self.lafite_xi <= 1.0:
            raise UserError(f"--lafite_xi must be in [0, 1], got {self.lafite_xi}")
        if self.min_snr_gamma <= 0.0:
            raise UserError(f"--min_snr_gamma must be positive, got {self.min_snr_gamma}")
        if self.loss_weighting == "clipped_snr" and self.min_snr_gamma < 1.0:
            raise UserError(f"--loss_weighting=clipped_snr keeps the x0 weight in [1, gamma]; "
                            f"--min_snr_gamma must be at least 1, got {self.min_snr_gamma}")
        if self.clip_image_size and self.clip_image_size < 8:
            raise UserError(f"--clip_image_size must be 0 (the DDPM's --image_size) or at least 8, "
                            f"got {self.clip_image_size}")
        if self.gap_noise_std < 0.0:
            raise UserError(f"--gap_noise_std must not be negative, got {self.gap_noise_std}")
        if self.condition in ("clip_image", "clip_text") and not self.clip_model:
            raise UserError(f"--condition={self.condition} needs --clip_model")
        if self.sample_columns < 0:
            raise UserError(f"--sample_columns must not be negative, got {self.sample_columns}")
        if self.sampling_steps < 1 or self.sampling_steps > self.timesteps:
            raise UserError(f"--sampling_steps must be in [1, {self.timesteps}], got {self.sampling_steps}")
        return self

    @property
    def is_conditional(self) -> bool:
        return self.condition != "none"
