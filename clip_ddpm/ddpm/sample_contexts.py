"""The grid columns a sampling request asks for, as context vectors the run's U-Net accepts."""
from __future__ import annotations

import numpy as np

from clip_ddpm.ddpm.config import Config
from clip_ddpm.ddpm.contexts import read_context_array
from clip_ddpm.errors import UserError
from clip_ddpm.training.workdir import RunInfo


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
        from clip_ddpm.ddpm.prompt_contexts import encode_prompts
        vectors = encode_prompts(config, list(request.prompts), info.clip_weights_hash)
        if vectors.shape[1] != info.context_dim:
            raise UserError(f"--clip_model {config.clip_model} gives {vectors.shape[1]}-wide embeddings but this "
                            f"run was trained on {info.context_dim}-wide contexts (has the model changed?)")
        return vectors, list(request.prompts)
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
