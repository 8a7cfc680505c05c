"""The grid columns a sampling request asks for, as context vectors the run's U-Net accepts.

Class labels become one-hot vectors, a context file is read as is, and text prompts go through
the very CLIP named in the run's flags.txt, normalised exactly as the training contexts were
(`embedding_cache.as_contexts`) and then mapped by the run's gap-closing transform, if it has one
(`ddpm.context_transform`: a gapshift run centres prompts on the text mean it recorded). That
last path is what lets a run trained on CLIP *image* embeddings (--condition=clip_image), which
never saw a caption, be sampled from text: CLIP puts a caption and a matching picture close
together in one space.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from clip_ddpm.clip.embedding_cache import as_contexts
from clip_ddpm.clip.encoder import CLIPEncoder
from clip_ddpm.ddpm.config import Config
from clip_ddpm.ddpm.context_transform import load_context_transform
from clip_ddpm.ddpm.contexts import read_context_array
from clip_ddpm.errors import UserError
from clip_ddpm.training.workdir import RunInfo, check_same_clip


def _class_index(label: str, class_names: tuple[str, ...]) -> int:
    """A class given by index ("3") or by name ("red circle")."""
    label = label.strip()
    if label.lstrip("-").isdigit():
        index = int(label)
        if not 0 <= index < len(class_names):
            raise UserError(f"--class_label {index} is out of range: the run has {len(class_names)} classes")
        return index
    if label in class_names:
        return class_names.index(label)
    raise UserError(f"--class_label {label!r} is not a class of this run; classes: "
                    + ", ".join(class_names[:12]) + (" ..." if len(class_names) > 12 else ""))


def contexts_for_request(request, config: Config, info: RunInfo) -> tuple[np.ndarray | None, list[str]]:
    """(contexts [C, D] or None for an unconditional model, one title per column)."""
    given = [name for name, value in (("--class_label", request.class_labels),
                                      ("--context_file", request.context_file),
                                      ("--prompt", request.prompts)) if value]
    if len(given) > 1:
        raise UserError(f"give only one of {', '.join(given)}")
    if info.condition == "none":
        if given:
            raise UserError(f"this run is unconditional (--condition=none): {given[0]} cannot be used")
        return None, ["unconditional"]
    if request.prompts:
        if info.condition not in ("clip_image", "clip_text"):
            raise UserError(f"--prompt needs a CLIP-conditioned run; this one is --condition={info.condition}")
        vectors = encode_prompts(config, list(request.prompts), (info.clip_weights_hash, info.clip_fingerprint))
        if vectors.shape[1] != info.context_dim:
            raise UserError(f"--clip_model {config.clip_model} gives {vectors.shape[1]}-wide embeddings but this "
                            f"run was trained on {info.context_dim}-wide contexts (has the model changed?)")
        # A gap-closing run maps prompts as its training recorded (gapshift: centred on the text mean).
        return load_context_transform(request.workdir, config).for_sampling(vectors), list(request.prompts)
    if request.context_file:
        vectors = read_context_array(request.context_file, allow_single=True)
        if vectors.shape[1] != info.context_dim:
            raise UserError(f"--context_file {request.context_file} has shape {vectors.shape}; "
                            f"this run needs [N, {info.context_dim}]")
        return vectors, [f"context {i}" for i in range(len(vectors))]
    if info.condition == "class":
        labels = request.class_labels or tuple(str(i) for i in range(len(info.class_names)))
        indices = [_class_index(label, info.class_names) for label in labels]
        return np.eye(info.context_dim, dtype=np.float32)[indices], [info.class_names[i] for i in indices]
    if request.class_labels:
        raise UserError(f"--class_label needs a class-conditioned run; this one is --condition={info.condition}")
    raise UserError(f"this run (--condition={info.condition}) needs --context_file"
                    + (" or --prompt" if info.condition.startswith("clip") else ""))


def encode_prompts(config, prompts: Sequence[str], trained_clip: tuple[str, str] = ("", "")) -> np.ndarray:
    """float32 [len(prompts), projection_dim]: the prompts as contexts of the run `config` describes.

    trained_clip: the run's record of its CLIP (run_info.json); a CLIP at the same --clip_model
    with other weights, config or compute dtype is refused.
    """
    prompts = [str(p) for p in prompts]
    if not prompts or not all(p.strip() for p in prompts):
        raise UserError("--prompt needs non-empty text")
    if not config.clip_model:
        raise UserError(f"this run (--condition={config.condition}) names no --clip_model to encode prompts with")
    encoder = CLIPEncoder.from_pretrained(config.clip_model, revision=config.clip_revision)
    check_same_clip(trained_clip, config.clip_model, encoder.weights_hash, encoder.fingerprint)
    if encoder.tokenizer is None:
        raise UserError(f"CLIP model {config.clip_model!r} has no tokenizer files, so it cannot encode --prompt")
    return as_contexts(encoder.encode_texts(prompts))
