"""A finished CLIP run given to the study by --clip_run is found where it is now: a run trained
in one place and copied elsewhere (another machine, another folder) is reused, and a run that is
not finished is refused with the missing file named."""
from __future__ import annotations

import json
import shutil

import pytest
from study_setup import parse, study_clip_dir  # noqa: F401  (a fixture)

from clip_ddpm.clip.train.config import ClipTrainConfig
from clip_ddpm.errors import UserError
from clip_ddpm.training.flags import to_flagfile_text
from experiments.study.clip_phase import conditioning_clip


def _finished_clip_run(run_dir, exported_clip) -> None:
    """What train_clip leaves in a finished run: its flags (naming where it was trained), its
    evaluation and the model exported into the run's own directory."""
    run_dir.mkdir(parents=True)
    (run_dir / "flags.txt").write_text(to_flagfile_text(ClipTrainConfig(workdir=str(run_dir))))
    (run_dir / "eval.json").write_text(json.dumps({"zero_shot_accuracy": 0.5}))
    shutil.copytree(exported_clip, run_dir / "clip")


def test_a_copied_clip_run_is_reused_from_where_it_is_now(tmp_path, study_clip_dir):
    trained_at = tmp_path / "trained" / "clip_run"
    _finished_clip_run(trained_at, study_clip_dir)
    copied = tmp_path / "elsewhere" / "clip_run"
    shutil.copytree(trained_at, copied)
    shutil.rmtree(tmp_path / "trained")  # the place its flags name is gone

    setup = parse(f"--workdir={tmp_path / 'study'}", f"--clip_run={copied}")
    choice = conditioning_clip(setup, progress=None)
    assert choice.path == str(copied / "clip")
    assert choice.source == "reused run"
    assert choice.evaluation == {"zero_shot_accuracy": 0.5}


@pytest.mark.parametrize("removed", ["eval.json", "clip/config.json"])
def test_an_unfinished_clip_run_is_refused_naming_what_it_lacks(tmp_path, study_clip_dir, removed):
    run = tmp_path / "clip_run"
    _finished_clip_run(run, study_clip_dir)
    (run / removed).unlink()
    setup = parse(f"--workdir={tmp_path / 'study'}", f"--clip_run={run}")
    with pytest.raises(UserError, match=f"not a finished CLIP run: .*{removed}"):
        conditioning_clip(setup, progress=None)
