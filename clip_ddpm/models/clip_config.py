"""CLIP hyper-parameters, and their translation from/to transformers' config.json.

Field names and defaults are transformers' (those of openai/clip-vit-base-patch32), so a
config.json round-trips through these dataclasses and ``transformers.CLIPConfig`` unchanged.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from clip_ddpm.errors import UserError


class CLIPError(UserError, ValueError):
    """A CLIP configuration or input that the model cannot use."""


# OpenAI's vocabulary put <|endoftext|> last, and old Hugging Face configs recorded
# eos_token_id=2; for those the end of text is found as the largest id in the row.
LEGACY_EOS_TOKEN_ID = 2


# Activations the towers can use (``hidden_act``), by their transformers names.
ACTIVATION_NAMES = ("quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu")


def _pick(d: Mapping[str, Any], cls: type) -> dict[str, Any]:
    """The entries of a Hugging Face config dict that name fields of ``cls``."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names and v is not None}


def _check_tower(cfg: Any, tower: str) -> None:
    if cfg.hidden_act not in ACTIVATION_NAMES:
        raise CLIPError(
            f"{tower}: hidden_act={cfg.hidden_act!r} is not supported; "
            f"choose one of {', '.join(ACTIVATION_NAMES)}."
        )
    if cfg.hidden_size % cfg.num_attention_heads:
        raise CLIPError(
            f"{tower}: hidden_size={cfg.hidden_size} is not a multiple of "
            f"num_attention_heads={cfg.num_attention_heads}."
        )


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """Text tower hyper-parameters; defaults are those of openai/clip-vit-base-patch32."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_attention_heads: int = 8
    num_hidden_layers: int = 12
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    bos_token_id: int = 49406
    eos_token_id: int = 49407
    pad_token_id: int = 1

    def __post_init__(self) -> None:
        _check_tower(self, "text_config")

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any]) -> CLIPTextConfig:
        """Reads a transformers ``text_config`` dict; unknown keys are ignored."""
        kw = _pick(d, cls)
        eos = kw.get("eos_token_id")
        if isinstance(eos, (list, tuple)):
            if len(eos) != 1:
                raise CLIPError(f"text_config: eos_token_id={eos!r}; exactly one end-of-text id is needed.")
            kw["eos_token_id"] = eos[0]
        return cls(**kw)

    def to_hf_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "model_type": "clip_text_model"}


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """Vision tower hyper-parameters; defaults are those of openai/clip-vit-base-patch32."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_attention_heads: int = 12
    num_hidden_layers: int = 12
    image_size: int = 224
    patch_size: int = 32
    num_channels: int = 3
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        _check_tower(self, "vision_config")
        if self.image_size % self.patch_size:
            raise CLIPError(
                f"vision_config: image_size={self.image_size} is not a multiple of "
                f"patch_size={self.patch_size}."
            )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any]) -> CLIPVisionConfig:
        """Reads a transformers ``vision_config`` dict; square sizes given as pairs are accepted."""
        kw = _pick(d, cls)
        for key in ("image_size", "patch_size"):
            value = kw.get(key)
            if isinstance(value, (list, tuple)):
                if len(value) != 2 or value[0] != value[1]:
                    raise CLIPError(f"vision_config: {key}={value!r}; only square sizes are supported.")
                kw[key] = value[0]
        return cls(**kw)

    def to_hf_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "model_type": "clip_vision_model"}


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """Both towers plus the shared embedding space."""

    text: CLIPTextConfig = dataclasses.field(default_factory=CLIPTextConfig)
    vision: CLIPVisionConfig = dataclasses.field(default_factory=CLIPVisionConfig)
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any]) -> CLIPConfig:
        """Reads a transformers ``config.json`` of a ``CLIPModel``.

        Old checkpoints may also carry ``text_config_dict``/``vision_config_dict``. When one is
        present (not null) transformers builds the tower from it alone, every field it omits
        taking its default and overriding ``text_config``/``vision_config``; so do we.
        """
        if d.get("model_type", "clip") != "clip":
            raise CLIPError(f"config.json has model_type={d.get('model_type')!r}; a 'clip' model is needed.")
        sub = {}
        for name in ("text", "vision"):
            legacy = d.get(f"{name}_config_dict")
            sub[name] = legacy if legacy is not None else (d.get(f"{name}_config") or {})
        return cls(
            text=CLIPTextConfig.from_hf_dict(sub["text"]),
            vision=CLIPVisionConfig.from_hf_dict(sub["vision"]),
            **_pick(d, cls),
        )

    def to_hf_dict(self) -> dict[str, Any]:
        """The ``config.json`` that ``transformers.CLIPModel.from_pretrained`` expects."""
        return {
            "architectures": ["CLIPModel"],
            "model_type": "clip",
            "projection_dim": self.projection_dim,
            "logit_scale_init_value": self.logit_scale_init_value,
            "text_config": {**self.text.to_hf_dict(), "projection_dim": self.projection_dim},
            "vision_config": {**self.vision.to_hf_dict(), "projection_dim": self.projection_dim},
            "dtype": "float32",
        }
