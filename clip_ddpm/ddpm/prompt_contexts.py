"""Text prompts -> the context vectors of a CLIP-conditioned run, for sampling.

A run trained on CLIP image embeddings (--condition=clip_image) never saw a caption, yet it can
be sampled from text: CLIP puts a caption and a matching picture close together in one space.
The prompt must therefore go through the very CLIP named in the run's flags.txt and be
normalised exactly as the training contexts were (`embeddings.as_contexts`).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from clip_ddpm.errors import UserError
from clip_ddpm.training.workdir import check_same_clip


def encode_prompts(config, prompts: Sequence[str], trained_weights_hash: str = "") -> np.ndarray:
    """float32 [len(prompts), projection_dim]: the prompts as contexts of the run `config` describes.

    trained_weights_hash: the run's record of its CLIP (run_info.json); a CLIP with other weights
    at the same --clip_model is refused.
    """
    from clip_ddpm.clip.encoder import CLIPEncoder
    from clip_ddpm.clip.embedding_cache import as_contexts

    prompts = [str(p) for p in prompts]
    if not prompts or not all(p.strip() for p in prompts):
        raise UserError("--prompt needs non-empty text")
    if not config.clip_model:
        raise UserError(f"this run (--condition={config.condition}) names no --clip_model to encode prompts with")
    encoder = CLIPEncoder.from_pretrained(config.clip_model)
    check_same_clip(trained_weights_hash, config.clip_model, encoder.weights_hash)
    if encoder.tokenizer is None:
        raise UserError(f"CLIP model {config.clip_model!r} has no tokenizer files, so it cannot encode --prompt")
    return as_contexts(encoder.encode_texts(prompts))
