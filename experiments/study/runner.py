"""The study from end to end: CLIP, judge, variants, validation and test sampling, report.

Every phase keeps what it made in W and finds it there on a rerun: a finished CLIP, oracle,
variant or set of scores is reused, an interrupted training run resumes from its checkpoint, and
a rerun of a finished study only writes the report again. W/study_flags.txt pins the settings.
"""
from __future__ import annotations

import dataclasses
import os
import time

from clip_ddpm.errors import UserError

from .config import StudySetup, check_and_save
from .progress import Progress
from .variants import run_dir, uses_prompts, variant_config

PHASES = ("CLIP", "judge", "training", "validation sampling", "test sampling", "report")


def _finished_step(workdir: str) -> int | None:
    """The latest checkpoint step of a run directory (None without one)."""
    from clip_ddpm.training.checkpoints import Checkpoints, checkpoint_dir
    from clip_ddpm.training.workdir import RUN_INFO_FILENAME

    if not (os.path.isdir(checkpoint_dir(workdir)) and os.path.isfile(os.path.join(workdir, RUN_INFO_FILENAME))):
        return None
    checkpoints = Checkpoints(workdir, create=False)
    try:
        return checkpoints.latest_step()
    finally:
        checkpoints.close()


def _real_sets(setup: StudySetup, image_size: int = 0):
    """(the first seed's training images, real test images with every class), at `image_size`
    pixels (0: the DDPM's)."""
    from clip_ddpm.training.datasets import load_split

    study, ddpm = setup.study, setup.ddpm
    first = dataclasses.replace(ddpm, seed=study.seeds[0], image_size=image_size or ddpm.image_size)
    train = load_split(first, "train", whole=True)
    test = load_split(dataclasses.replace(first, holdout_pairs=()), "test", num_images=study.real_test_images,
                      whole=True)
    return train, test


def run_study(setup: StudySetup) -> dict | None:
    """Runs (or resumes) the study; returns the results written to W/results.json, or None when
    a training run was interrupted (run the study again to resume)."""
    import jax

    from clip_ddpm.clip.encoder import CLIPEncoder
    from clip_ddpm.ddpm.trainer import train_and_evaluate
    from clip_ddpm.training import parallel

    from . import report
    from .clip_phase import conditioning_clip, load_or_measure_health, scorer_clip
    from .judge import clip_zero_shot_judge, shapes_oracle
    from .prompts import prompt_set
    from .sampler import load_run
    from .scoring import Scorers, choose_guidance, real_references, sample_and_score

    study = setup.study
    if study.estimate_only:
        from .budget import estimate_study

        rate = study.peak_tflops * 1e12 * study.sustained_fraction
        estimate = estimate_study(setup, rate)
        print(f"Estimated from XLA's FLOP counts at {study.sustained_fraction:.0%} of {study.peak_tflops:g} TFLOP/s "
              f"({rate / 1e12:.0f} TFLOP/s sustained; compilation and host work not included):\n{estimate.table()}",
              flush=True)
        return None
    resumed = check_and_save(setup)
    parallel.configure_jax()
    progress = Progress(study.workdir, PHASES)
    progress.note(("resuming the study in " if resumed else "new study in ") + study.workdir)
    cache_dir = setup.ddpm.clip_cache_dir or os.path.join(study.workdir, "embeddings")
    train, real = _real_sets(setup)
    # What the conditioning CLIP reads its images at (the same examples), for its embedding health.
    clip_size = setup.ddpm.clip_image_size
    clip_train, clip_real = (_real_sets(setup, clip_size) if clip_size not in (0, setup.ddpm.image_size)
                             else (train, real))
    is_shapes = setup.ddpm.dataset == "shapes"
    uses_clip = any(uses_prompts(v) for v in study.variants)

    with progress.phase("CLIP"):
        clip = conditioning_clip(setup, progress) if uses_clip or study.clip_model or study.clip_run else None
        scorer = scorer_clip(setup, progress)
        encoders = {}
        health = {}
        if clip is not None:
            encoders["conditioning"] = CLIPEncoder.from_pretrained(clip.path)
            health["conditioning"] = load_or_measure_health(os.path.join(study.workdir, "embedding_health.json"),
                                                            encoders["conditioning"], clip_train, clip_real, cache_dir)
        if scorer is not None:
            encoders["independent"] = CLIPEncoder.from_pretrained(scorer.path)
            health["independent"] = load_or_measure_health(
                os.path.join(study.workdir, "embedding_health_scorer.json"), encoders["independent"], clip_train,
                clip_real, os.path.join(study.workdir, "embeddings_scorer"))

    with progress.phase("judge"):
        if study.oracle == "cnn":
            if not is_shapes:
                raise UserError("--oracle=cnn is trained on shapes renders; use --oracle=clip for other datasets")
            judge = shapes_oracle(study, setup.ddpm.image_size, real, progress)
        else:
            label = "independent" if "independent" in encoders else "conditioning"
            judge = clip_zero_shot_judge(encoders[label], (scorer or clip).path, real, label == "independent")
        progress.note(f"{judge.name} on real test images: "
                      + ", ".join(f"{k} {v:.1%}" for k, v in judge.real_accuracy.items()))

    runs = [(v, s) for v in study.variants for s in study.seeds]
    with progress.phase("training"):
        for variant, seed in runs:
            config = variant_config(setup.ddpm, study.workdir, variant, seed, clip.path if clip else "", cache_dir)
            step = _finished_step(config.workdir)
            if step is not None and step >= config.num_steps:
                progress.note(f"{variant} seed {seed}: finished earlier ({step} steps), not retrained")
                continue
            progress.note(f"{variant} seed {seed}: " + (f"resuming at step {step}" if step else "training")
                          + f" to {config.num_steps} steps in {config.workdir}")
            start = time.perf_counter()
            result = train_and_evaluate(config)
            if result.preempted or result.step < config.num_steps:
                progress.note(f"{variant} seed {seed}: interrupted at step {result.step}; run the study again to resume")
                return None
            progress.record_run(f"{variant}/seed{seed}", result.step, result.images_per_second / config.batch_size)
            progress.timings["runs"][f"{variant}/seed{seed}"]["seconds"] = time.perf_counter() - start
            progress.save()

    class_names = real.class_names
    holdout = ()
    if is_shapes and setup.ddpm.holdout_pairs:
        from clip_ddpm.data.shapes import class_index
        holdout = tuple(class_index(p) for p in setup.ddpm.holdout_pairs)
    validation = prompt_set("validation", study.validation_templates, class_names, is_shapes)
    test = prompt_set("test", study.test_templates, class_names, is_shapes)
    real_features, _ = judge.outputs(real.images)
    scorers = Scorers(judge, real_features, dict(encoders), holdout)

    def sample_every_run(prompts, samples: int, weights_of, split: str) -> dict[str, list[dict]]:
        """Scores of each variant's seeds on a prompt set, at the guidance weights weights_of(variant)."""
        scores: dict[str, list[dict]] = {}
        for variant, seed in runs:
            weights = weights_of(variant)
            progress.note(f"{variant} seed {seed}: {len(prompts.texts)} {split} prompts x {samples} "
                          f"at w = {', '.join(f'{w:g}' for w in weights)}")
            run = load_run(run_dir(study.workdir, variant, seed))
            scores.setdefault(variant, []).append(sample_and_score(run, prompts, samples, weights, scorers,
                                                                   study, split))
        return scores

    with progress.phase("validation sampling"):
        scores_val = sample_every_run(validation, study.validation_samples, lambda v: list(study.guidance),
                                      "validation")
        chosen = choose_guidance(scores_val)

    with progress.phase("test sampling"):
        scores_test = sample_every_run(test, study.test_samples, lambda v: [chosen[v]], "test")
        references = real_references(scorers, real.images, real.labels, train.images, test, study.test_samples,
                                     len(test.texts) * study.test_samples)

    with progress.phase("report"):
        results = report.assemble(setup, clip, scorer, health, judge, scores_val, scores_test, chosen,
                                  references, progress.timings, holdout, validation, test)
        report.write_all(study.workdir, results, progress)
    progress.note(f"report: {os.path.join(study.workdir, report.REPORT_FILENAME)}")
    jax.clear_caches()
    return results
