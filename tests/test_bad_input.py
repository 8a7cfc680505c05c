"""Bad input is one clear `error:` line and a non-zero exit, found before anything is trained or
written: command lines, run settings, prompts, and the splits a run will need at its end."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from clip_ddpm.clip.train.config import ClipTrainConfig
from clip_ddpm.ddpm.config import Config
from clip_ddpm.ddpm.sample_contexts import encode_prompts
from clip_ddpm.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "experiments", "configs", "smoke.cfg")


def _command(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


# A missing flagfile and a bad enum value: tests/test_train_cli.py.
@pytest.mark.parametrize("args,message", [
    (("clip_ddpm.train", f"--flagfile={REPO}"), "Unable to open flagfile: [Errno 21] Is a directory"),
    (("clip_ddpm.train", f"--flagfile={SMOKE}", "--num_stpes=5"), "Unknown command line flag 'num_stpes'"),
    (("clip_ddpm.train_clip", "--batch_size=many"), "flag --batch_size=many"),
])
def test_command_line_errors_are_one_line_with_status_2(args, message):
    result = _command(*args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


@pytest.mark.parametrize("config_class", [Config, ClipTrainConfig])
@pytest.mark.parametrize("field,value", [("num_steps", 0), ("num_steps", -3), ("batch_size", 0),
                                         ("batch_size", -64)])
def test_zero_or_negative_steps_and_batches_are_refused(config_class, field, value):
    with pytest.raises(UserError, match=f"--{field} must be positive, got {value}"):
        config_class(workdir="run", **{field: value}).validate()


def test_clipped_snr_needs_a_gamma_of_at_least_one():
    with pytest.raises(UserError, match="--min_snr_gamma must be at least 1, got 0.5"):
        Config(workdir="run", loss_weighting="clipped_snr", min_snr_gamma=0.5).validate()
    Config(workdir="run", loss_weighting="min_snr", min_snr_gamma=0.5).validate()


def test_an_empty_prompt_is_refused_before_any_model_is_loaded():
    config = Config(workdir="run", condition="clip_image", clip_model="/nonexistent/clip")
    for prompts in ([""], ["a red circle", "   "], []):
        with pytest.raises(UserError, match="--prompt needs non-empty text"):
            encode_prompts(config, prompts)


class ClipDdpmTrainOnly(tfds.core.GeneratorBasedBuilder):
    """A prepared tfds dataset with a train split and no test split (made here, offline)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 3)), "label": tfds.features.ClassLabel(names=["a", "b"])}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(16):
            yield i, {"image": np.full((8, 8, 3), 10 * i, np.uint8), "label": i % 2}


def _folder(root):
    for name, colour in (("red", (200, 20, 20)), ("blue", (20, 20, 200))):
        (root / name).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (12, 12), colour).save(root / name / f"{i}.png")
    return str(root)


def test_clip_training_checks_its_test_split_before_step_0(tmp_path):
    from clip_ddpm.clip.train.trainer import train_clip_and_evaluate
    from clip_ddpm.data import DatasetError, tfds_data

    ClipDdpmTrainOnly(data_dir=str(tmp_path / "tfds")).download_and_prepare()
    with pytest.raises(DatasetError, match="has no split 'test' \\(it has train\\)"):
        tfds_data.load("clip_ddpm_train_only", split="test", image_size=8, data_dir=str(tmp_path / "tfds"))
    small = dict(image_size=8, patch_size=4, batch_size=8, vision_width=32, text_width=32, projection_dim=16)
    runs = {
        "tfds": (dict(dataset="tfds:clip_ddpm_train_only", tfds_data_dir=str(tmp_path / "tfds")), "no split 'test'"),
        "folder": (dict(dataset=f"folder:{_folder(tmp_path / 'pictures')}"), "0 < test_fraction < 1"),
    }
    for name, (overrides, message) in runs.items():
        workdir = tmp_path / name
        with pytest.raises(UserError, match=message):
            train_clip_and_evaluate(ClipTrainConfig(workdir=str(workdir), **small, **overrides))
        assert not (workdir / "checkpoints").exists() and not (workdir / "metrics.jsonl").exists()
    # What the error asks for works: a folder with a held-out test fraction loads both splits.
    from clip_ddpm.training.datasets import load_split
    config = ClipTrainConfig(workdir="x", **small, **runs["folder"][0], test_fraction=0.25)
    assert len(load_split(config, "train")) == 12 and len(load_split(config, "test", whole=True)) == 4
