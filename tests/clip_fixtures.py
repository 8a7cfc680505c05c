"""Tiny random CLIP checkpoints made by transformers itself, for tests that need a real reference.

``make_tiny_clip`` writes a directory exactly as ``transformers.CLIPModel.save_pretrained`` and
``CLIPTokenizerFast.save_pretrained`` do (config.json, model.safetensors, tokenizer files), with
a vocabulary trained on a few captions, so loading code is exercised on the real format.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from clip_ddpm.clip.tokenizer import train_clip_tokenizer

CAPTIONS = [
    "a red circle on a blue background",
    "a small green triangle next to a big yellow square",
    "two purple stars above an orange circle",
    "a photo of a cat sitting on a mat",
    "a drawing of a dog, in black and white",
    "three blue squares in a row",
    "an image of a large red triangle",
    "the quick brown fox jumps over the lazy dog",
]

DEFAULT_TEXT = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                    max_position_embeddings=16, hidden_act="quick_gelu")
DEFAULT_VISION = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                      image_size=32, patch_size=8, hidden_act="quick_gelu")


def make_tokenizer(directory: str | Path, vocab_size: int = 600, context_length: int = 16):
    """A CLIP-format BPE trained on ``CAPTIONS``, saved in ``directory``."""
    return train_clip_tokenizer(CAPTIONS * 4, vocab_size, directory, context_length=context_length)


def make_tiny_clip(directory: str | Path, *, text: dict[str, Any] | None = None,
                   vision: dict[str, Any] | None = None, projection_dim: int = 24,
                   eos_token_id: int | None = None, seed: int = 0, tokenizer_dir: str | Path | None = None):
    """Saves a random tiny ``transformers.CLIPModel`` + tokenizer in ``directory``; returns the model.

    Every parameter is perturbed away from transformers' initialisation (LayerNorm scales are
    not ones, biases not zeros, the logit scale not its default) so a parameter mapped to the
    wrong place, or not at all, shows in the outputs. ``eos_token_id`` overrides the config's
    end-of-text id (default: the tokenizer's); 2 is the value of old OpenAI checkpoints, which
    selects argmax pooling in transformers.
    """
    import torch
    import transformers

    directory = Path(directory)
    text_kw = {**DEFAULT_TEXT, **(text or {})}
    vision_kw = {**DEFAULT_VISION, **(vision or {})}
    tok_dir = Path(tokenizer_dir) if tokenizer_dir else directory.with_name(directory.name + "_tokenizer")
    tokenizer = make_tokenizer(tok_dir, context_length=text_kw["max_position_embeddings"])
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id if eos_token_id is None else eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **text_kw),
        vision_config=vision_kw, projection_dim=projection_dim)
    torch.manual_seed(seed)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.1 if p.ndim <= 1 else 0.02))
        model.logit_scale.fill_(1.5 + seed * 0.1)
    model.save_pretrained(str(directory), safe_serialization=True)
    tokenizer.save_pretrained(str(directory))
    return model
