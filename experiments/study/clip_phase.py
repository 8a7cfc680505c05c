"""Phase 1: the CLIP the variants are conditioned on (and an independent scorer CLIP), and the
health of its embedding space.

The conditioning CLIP is, in order of preference, a pretrained one (--clip_model), a finished
CLIP run (--clip_run), or one trained here from the --clip_* flags in W/clip (resumed if
interrupted, reused when finished).
"""
from __future__ import annotations

import dataclasses
import os

from clip_ddpm.clip.train.config import EXPORT_DIRNAME, ClipTrainConfig
from clip_ddpm.clip.train.trainer import EVAL_FILENAME
from clip_ddpm.errors import UserError
from clip_ddpm.training.flags import read_flagfile
from clip_ddpm.training.workdir import flags_path

from .config import StudySetup
from .files import read_json, write_json
from .progress import Progress


@dataclasses.dataclass(frozen=True)
class ClipChoice:
    path: str  # what --clip_model takes: a hub id or a Hugging Face directory
    source: str  # "pretrained", "reused run" or "trained here"
    evaluation: dict | None = None  # the run's own eval.json, when it is a run


def _finished_run(run_dir: str) -> ClipChoice | None:
    """The exported model of a finished CLIP run, or None if it is not finished.

    A run exported into its own directory (no --export_dir) is found where the run is now, not
    where its flags say it was trained: a run copied to another machine or folder stays usable.
    """
    if _missing_part(run_dir):
        return None
    return ClipChoice(_export_path(run_dir), "reused run", read_json(os.path.join(run_dir, EVAL_FILENAME)))


def _export_path(run_dir: str) -> str:
    saved = read_flagfile(flags_path(run_dir), ClipTrainConfig)
    return saved.export_dir or os.path.join(run_dir, EXPORT_DIRNAME)


def _missing_part(run_dir: str) -> str | None:
    """The first file a finished run has and `run_dir` lacks (flags, evaluation, exported model)."""
    for path in (flags_path(run_dir), os.path.join(run_dir, EVAL_FILENAME)):
        if not os.path.isfile(path):
            return path
    config = os.path.join(_export_path(run_dir), "config.json")
    return None if os.path.isfile(config) else config


def _trained(config: ClipTrainConfig, progress: Progress, what: str) -> ClipChoice:
    done = _finished_run(config.workdir)
    if done is not None:
        progress.note(f"{what}: finished run in {config.workdir}, reused")
        return dataclasses.replace(done, source="trained here")
    from clip_ddpm.clip.train.trainer import train_clip_and_evaluate

    progress.note(f"{what}: training {config.num_steps} steps in {config.workdir}")
    result = train_clip_and_evaluate(config.validate())
    progress.record_run(what, result.step, result.images_per_second / config.batch_size)
    done = _finished_run(config.workdir)
    if done is None:
        raise UserError(f"the CLIP run in {config.workdir} stopped before it finished; run the study again to resume")
    return dataclasses.replace(done, source="trained here")


def conditioning_clip(setup: StudySetup, progress: Progress) -> ClipChoice:
    study = setup.study
    if study.clip_model:
        return ClipChoice(study.clip_model, "pretrained")
    if study.clip_run:
        done = _finished_run(study.clip_run)
        if done is None:
            raise UserError(f"--clip_run {study.clip_run} is not a finished CLIP run: "
                            f"{_missing_part(study.clip_run)} is missing")
        return done
    config = dataclasses.replace(setup.clip, workdir=os.path.join(study.workdir, "clip"), export_dir="")
    return _trained(config, progress, "CLIP")


def scorer_clip(setup: StudySetup, progress: Progress) -> ClipChoice | None:
    """The independent CLIP for CLIP scores: given, or trained here from another seed."""
    study = setup.study
    if study.scorer_clip_model:
        return ClipChoice(study.scorer_clip_model, "pretrained")
    if study.scorer_clip_seed < 0:
        return None
    config = dataclasses.replace(setup.clip, workdir=os.path.join(study.workdir, "clip_scorer"),
                                 export_dir="", seed=study.scorer_clip_seed)
    return _trained(config, progress, "scorer CLIP")


def embedding_health(encoder, train, test, cache_dir: str) -> dict[str, float]:
    """Zero-shot accuracy on the test images (CLIP's own ceiling for reading a prompt), the
    modality gap and the matching/mismatched pair cosines over the training set."""
    from clip_ddpm.clip.embedding_cache import cached_embeddings
    from clip_ddpm.clip.train.evaluation import evaluate_clip
    from clip_ddpm.evaluation.embedding_health import modality_gap, pair_cosines

    scores = evaluate_clip(encoder, test)
    images, _ = cached_embeddings(train, encoder, "image", cache_dir)
    texts, _ = cached_embeddings(train, encoder, "text", cache_dir)
    cosines = pair_cosines(images, texts, train.labels)
    health = {k: float(v) for k, v in scores.items() if k.startswith(("zero_shot", "chance"))}
    health.update(modality_gap=modality_gap(images, texts), cosine_matching=cosines["matching"],
                  cosine_mismatched=cosines["mismatched"], train_images=len(train), test_images=len(test))
    return health


def load_or_measure_health(path: str, encoder, train, test, cache_dir: str) -> dict[str, float]:
    saved = read_json(path)
    if saved is not None:
        return saved
    health = embedding_health(encoder, train, test, cache_dir)
    write_json(path, health)
    return health
