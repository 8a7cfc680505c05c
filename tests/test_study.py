"""The "no text labels" study end to end on a micro configuration (seconds of training): the
report's structure, that its numbers are the run's, that w is chosen on the validation prompts,
and that a second run resumes without training or sampling anything again."""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from study_setup import CPU_CONFIG, GPU_CONFIG, TINY_DDPM, parse, study_clip_dir  # noqa: F401  (a fixture)

from clip_ddpm.data import shapes
from clip_ddpm.ddpm.context_transform import load_context_transform
from clip_ddpm.ddpm.trainer import train_and_evaluate
from clip_ddpm.errors import UserError
from clip_ddpm.evaluation.metrics import wilson_interval
from clip_ddpm.training.flags import read_flagfile
from clip_ddpm.ddpm.config import Config
from experiments.study import config as study_config
from experiments.study.prompts import known_templates
from experiments.study.runner import run_study
from experiments.study.variants import run_dir, variant_config

# The smallest study that still goes through every phase: a tiny random CLIP, an oracle that
# trains a few steps, three variants of two steps at 16 px, two guidance weights, DDIM with 2 steps
# (the class variant runs in the flowers study test).
MICRO = [*TINY_DDPM, "--variants=text,image_gapshift,none", "--sampling_batch=72", "--oracle_steps=3",
         "--oracle_images=64", "--oracle_widths=8,8,8", "--oracle_feature_dim=8", "--real_test_images=72",
         "--grid_prompts=4", "--ddpm_sample_columns=0"]


def _numbers_of(value, out: set[str]) -> set[str]:
    """Every way the report formats a number found in results.json."""
    if isinstance(value, dict):
        for item in value.values():
            _numbers_of(item, out)
    elif isinstance(value, list):
        for item in value:
            _numbers_of(item, out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
        out.update({str(value), f"{value:g}", f"{value:.0f}", f"{value:.1f}", f"{value:.2f}", f"{value:.3f}",
                    f"{100 * value:.1f}", f"{100 * value:g}"})
    return out


def _strings_of(value, out: list[str]) -> list[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            out.append(str(key))
            _strings_of(item, out)
    elif isinstance(value, list):
        for item in value:
            _strings_of(item, out)
    elif isinstance(value, str):
        out.append(value)
    return out


def test_micro_study_reports_its_own_numbers_chooses_w_on_validation_and_resumes(tmp_path, study_clip_dir, capsys):
    workdir = tmp_path / "study"
    args = [f"--flagfile={CPU_CONFIG}", *MICRO, f"--workdir={workdir}", f"--clip_model={study_clip_dir}"]
    setup = parse(*args)
    # An interrupted variant: the study must resume it, not start it again.
    gapshift = variant_config(setup.ddpm, str(workdir), "image_gapshift", 0, str(study_clip_dir),
                              str(workdir / "embeddings"))
    train_and_evaluate(gapshift, stop_at=1)

    run_study(setup)
    out = capsys.readouterr().out
    assert "image_gapshift seed 0: resuming at step 1" in out
    for phase in ("CLIP", "judge", "training", "validation sampling", "test sampling", "report"):
        assert re.search(rf"phase \d/6: {phase} done in", out)

    report = (workdir / "report.md").read_text()
    for heading in ("## Set-up", "## Judge", "## Results", "## Guidance sweep", "## Embedding health",
                    "## Reading", "## Samples", "## Wall time"):
        assert heading in report
    saved = json.loads((workdir / "results.json").read_text())
    assert saved["config"]["variants_not_run"] == ["image", "image_noise", "class", "image_elementwise"]
    for path in [saved["files"]["plot"], *saved["files"]["grids"].values()]:
        assert (workdir / path).is_file() and f"]({path})" in report
    assert set(saved["files"]["grids"]) == {"text", "image_gapshift", "none"}

    # Every number in the report is one of results.json's (strings such as paths taken out first).
    text = report
    for string in sorted(set(_strings_of(saved, [])), key=len, reverse=True):
        if len(string) > 2:
            text = text.replace(string, " ")
    allowed = _numbers_of(saved, set())
    stray = [n for n in re.findall(r"\d+(?:\.\d+)?", text) if n not in allowed]
    assert stray == []

    # ... and results.json's scores are the runs' own files: per seed, then their mean.
    for variant in ("text", "image_gapshift", "none"):
        folder = Path(run_dir(str(workdir), variant, 0)) / "study"
        validation = json.loads((folder / "validation.json").read_text())
        test = json.loads((folder / "test.json").read_text())
        # w is the best on the validation prompts; the test prompts are drawn at that w only.
        weights = validation["guidance"]
        best = weights[int(np.argmax([validation["scores"][f"{w:g}"]["accuracy_both"] for w in weights]))]
        assert saved["chosen_guidance"][variant] == best
        assert test["guidance"] == [best]
        assert saved["test"][variant]["accuracy_both"]["per_seed"] == [test["scores"][f"{best:g}"]["accuracy_both"]]
        # Per-attribute intervals count the same test images' right answers (72 of them, one seed).
        for attribute in ("shape", "colour"):
            right = round(test["scores"][f"{best:g}"][f"accuracy_{attribute}"] * 72)
            interval = saved["test_attribute_intervals"][variant][attribute]
            assert (interval["successes"], interval["images"]) == (right, 72)
            assert (interval["low"], interval["high"]) == pytest.approx(wilson_interval(right, 72))
        assert f"| {variant} | " in report
        with np.load(folder / "validation.npz") as v, np.load(folder / "test.npz") as t:
            assert not set(v["texts"].tolist()) & set(t["texts"].tolist())
            assert len(t["images"]) == 36 * 2 and set(t["guidance"].tolist()) == {best}
    assert saved["judge"]["chance"] == {"shape": pytest.approx(1 / 6), "colour": pytest.approx(1 / 6)}
    assert saved["validation"]["none"].keys() == {"0"}  # w does not apply to the unconditional model
    csv_lines = (workdir / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("set,variant,seed,w,") and len(csv_lines) > 1 + 4 * 3

    # The gap shift recorded its means, and prompts are centred on the text mean when sampled.
    transform = load_context_transform(gapshift.workdir, read_flagfile(os.path.join(gapshift.workdir, "flags.txt"),
                                                                      Config))
    assert transform.kind == "gapshift" and transform.sample_mean.shape == (20,)
    assert not np.allclose(transform.sample_mean, transform.train_mean)

    # A second run trains and samples nothing: it only writes the report again.
    stamps = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.suffix in (".json", ".npz")
              and "variants" in p.parts}
    checkpoints = sorted(str(p) for p in workdir.rglob("checkpoints/*"))
    report_time = (workdir / "report.md").stat().st_mtime_ns
    run_study(parse(*args))
    out = capsys.readouterr().out
    assert out.count("finished earlier (2 steps), not retrained") == 3
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert sorted(str(p) for p in workdir.rglob("checkpoints/*")) == checkpoints
    assert (workdir / "report.md").stat().st_mtime_ns > report_time
    assert json.loads((workdir / "timings.json").read_text())["invocations"] == 2

    # Other settings in the same directory are refused, not mixed in.
    with pytest.raises(UserError, match="holds a study with other settings.*ddpm_num_steps"):
        run_study(parse(*args, "--ddpm_num_steps=3"))


def test_prompt_phrasings_are_new_and_a_known_one_is_refused():
    setup = parse(f"--flagfile={CPU_CONFIG}")
    known = known_templates(True)
    assert not set(setup.study.validation_templates) & known
    assert not set(setup.study.test_templates) & known
    assert not set(setup.study.validation_templates) & set(setup.study.test_templates)
    from experiments.study.prompts import prompt_set
    with pytest.raises(UserError, match="is a training-caption or zero-shot template"):
        prompt_set("test", (shapes.PROMPT_TEMPLATES[0],), shapes.CLASS_NAMES, True)
    texts = prompt_set("test", ("there is a {colour} {shape}",), shapes.CLASS_NAMES, True).texts
    assert len(texts) == 36 and "there is an orange circle" in texts


def test_bad_study_flags_are_one_line_errors():
    with pytest.raises(UserError, match="unknown variant"):
        parse("--workdir=w", "--variants=text,pictures")
    with pytest.raises(UserError, match="validation and test prompts must differ"):
        parse("--workdir=w", "--validation_templates=a {colour} thing {shape}", "--test_templates=a {colour} thing {shape}")
    assert dataclasses.replace(parse("--workdir=w").study, variants=("image_noise@0.2",)).validate()
    # The recipes are checked before anything trains, not when the DDPM phase reaches them.
    with pytest.raises(UserError, match=r"DDPM recipe .*--batch_size must be positive, got -1"):
        parse(f"--flagfile={CPU_CONFIG}", "--workdir=w", "--ddpm_batch_size=-1")
    with pytest.raises(UserError, match=r"CLIP recipe .*--num_steps must be positive"):
        parse(f"--flagfile={CPU_CONFIG}", "--workdir=w", "--clip_num_steps=0")


def test_gpu_config_every_variant_and_seed_builds():
    setup = parse(f"--flagfile={GPU_CONFIG}", "--workdir=w")
    assert len(setup.study.seeds) >= 3 and set(study_config.VARIANTS) <= {v.split("@")[0] for v in setup.study.variants}
    assert len([v for v in setup.study.variants if v.startswith("image_noise@")]) >= 2  # the xi sweep
    assert setup.ddpm.down_chs == (256, 256, 512) and setup.ddpm.dtype == "bfloat16" and setup.ddpm.holdout_pairs
    assert setup.study.scorer_clip_seed >= 0 and setup.study.scorer_clip_seed != setup.clip.seed
    for variant in setup.study.variants:
        for seed in setup.study.seeds:
            config = variant_config(setup.ddpm, "w", variant, seed, "clip", "cache")
            assert config.seed == seed and config.workdir == run_dir("w", variant, seed)
