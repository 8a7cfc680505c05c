"""The run directory: checked before anything is written, so a failed start loses nothing."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from clip_ddpm.errors import UserError
from clip_ddpm.training import flags as flag_lib


def flags_path(workdir: str) -> str:
    return os.path.join(workdir, flag_lib.FLAGS_FILENAME)


def ensure_writable_directory(path: str, flag: str) -> None:
    """Creates `path` if needed; a UserError naming `flag` if it is a file or cannot be written."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path} exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {flag} {path}: {error.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path} is not writable")


def check_workdir(config: Any) -> Any | None:
    """Makes sure the workdir can be written and, if it holds a run, that this is the same run.

    Returns the configuration saved there by an earlier start (the run resumes), else None.
    Raises UserError for an unwritable directory or a run with different flags.
    """
    workdir = config.workdir
    ensure_writable_directory(workdir, "--workdir")
    path = flags_path(workdir)
    if not os.path.exists(path):
        return None
    saved = flag_lib.read_flagfile(path, type(config))
    conflicts = flag_lib.resume_conflicts(saved.resolved(), config.resolved(saved))
    if conflicts:
        shown = "; ".join(conflicts[:3]) + (f"; and {len(conflicts) - 3} more" if len(conflicts) > 3 else "")
        raise UserError(f"--workdir {workdir} holds a run with different settings ({shown}); "
                        "use a new --workdir or the saved flags")
    return saved


def start_run(config: Any):
    """What every trainer does first, before it loads data or writes a file: validate the flags,
    join a multi-host job, build the mesh, check the batch split and the workdir.

    Returns (config, mesh, is_chief, resumed), config with the values fixed at the run's first
    start filled in (`RunConfig.resolved`): use it, and write it to flags.txt.
    """
    import jax

    from clip_ddpm.training import parallel

    config.validate()
    parallel.initialize_distributed(config.distributed, config.coordinator_address, config.num_processes,
                                    config.process_id)
    parallel.configure_jax()
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.batch_size, mesh)
    saved = check_workdir(config)
    return config.resolved(saved), mesh, jax.process_index() == 0, saved is not None


def write_atomically(path: str, text: str) -> None:
    """Replaces `path` with `text` in one step: a crash or an error while writing leaves the
    previous file whole (the partial text goes to a temporary file that is then removed)."""
    temporary = path + ".tmp"
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_flags(config: Any) -> None:
    """Writes the resolved flags (atomically, so a crash never leaves half a file)."""
    write_atomically(flags_path(config.workdir), flag_lib.to_flagfile_text(config))


RUN_INFO_FILENAME = "run_info.json"


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What sampling needs beyond flags.txt and cannot cheaply recompute (it would have to load
    the dataset): the context width and the class names the model was trained with.

    clip_weights_hash identifies the CLIP whose embeddings were the contexts (empty without
    CLIP), and clip_fingerprint that CLIP's weights, config and compute dtype together.
    --clip_model names a path or a hub id, and what it holds can change after training: a
    retrained CLIP at the same path, or the same weights under another config, has a different
    embedding space, in which prompts would silently miss what the U-Net learned.
    """

    context_dim: int
    class_names: tuple[str, ...]
    condition: str
    clip_weights_hash: str = ""
    clip_fingerprint: str = ""


def write_run_info(workdir: str, info: RunInfo) -> None:
    """Writes run_info.json atomically (a failed write keeps the previous one)."""
    write_atomically(os.path.join(workdir, RUN_INFO_FILENAME), json.dumps(dataclasses.asdict(info), indent=1))


def read_run_info(workdir: str) -> RunInfo:
    path = os.path.join(workdir, RUN_INFO_FILENAME)
    if not os.path.isfile(path):
        raise UserError(f"{workdir} holds no trained run ({RUN_INFO_FILENAME} is missing)")
    with open(path, encoding="utf-8") as handle:
        raw = json.load(handle)
    return RunInfo(context_dim=int(raw["context_dim"]), class_names=tuple(raw["class_names"]),
                   condition=raw["condition"], clip_weights_hash=raw.get("clip_weights_hash", ""),
                   clip_fingerprint=raw.get("clip_fingerprint", ""))


def recorded_clip(workdir: str) -> tuple[str, str]:
    """(weights hash, fingerprint) of the CLIP the run in `workdir` recorded (empty strings when
    there is no run_info.json yet, the run uses no CLIP, or it predates the record)."""
    if not os.path.isfile(os.path.join(workdir, RUN_INFO_FILENAME)):
        return "", ""
    info = read_run_info(workdir)
    return info.clip_weights_hash, info.clip_fingerprint


def check_same_clip(trained: tuple[str, str], clip_model: str, weights_hash: str, fingerprint: str) -> None:
    """UserError unless the CLIP at `clip_model` (its `weights_hash` and `fingerprint`) is
    `trained`, the (weights hash, fingerprint) a run was trained with; what a run from before
    the record did not record passes."""
    trained_weights, trained_fingerprint = trained
    if trained_weights and weights_hash != trained_weights:
        raise UserError(f"--clip_model {clip_model} now holds other weights (sha256 {weights_hash[:12]}...) than "
                        f"the CLIP this run was trained with ({trained_weights[:12]}...); its embeddings "
                        "would not match what the U-Net learned: restore that CLIP or train a new run")
    if trained_fingerprint and fingerprint != trained_fingerprint:
        raise UserError(f"--clip_model {clip_model} holds the weights this run was trained with, but under another "
                        "config or compute dtype (activation, layer-norm eps, end-of-text id, heads, ...), which "
                        "changes its embeddings: restore that CLIP's config.json or train a new run")
