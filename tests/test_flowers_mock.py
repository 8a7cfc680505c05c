"""The course's flowers experiment: its flagfile, and a short run on mocked tf_flowers (no download)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from clip_fixtures import make_tiny_clip

from clip_ddpm.ddpm.config import Config
from clip_ddpm.ddpm.trainer import train_and_evaluate
from clip_ddpm.training.flags import read_flagfile
from clip_ddpm.training.workdir import read_run_info

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "flowers_gpu.cfg"
COURSE_PROMPTS = ("A round white daisy with a yellow center", "An orange sunflower with a big brown center",
                  "A deep red rose flower")


def test_flagfile_reproduces_the_course_setup():
    config = read_flagfile(str(CONFIG), Config).validate()
    assert (config.dataset, config.image_size, config.timesteps) == ("tfds:tf_flowers", 32, 400)
    assert config.batch_size == 128
    assert config.down_chs == (256, 256, 512) and config.dtype == "bfloat16"
    assert (config.condition, config.clip_model) == ("clip_image", "openai/clip-vit-base-patch32")
    assert config.context_drop_prob == 0.1 and 1000 <= config.num_steps <= 10000
    text = CONFIG.read_text()
    assert all(f'--prompt="{prompt}"' in text for prompt in COURSE_PROMPTS)


def test_short_clip_image_run_on_mock_tf_flowers(tmp_path):
    clip_dir = tmp_path / "clip"
    # The same CLIP width and run shape as test_clip_conditioning: the session's compilation cache
    # then serves this run's programs.
    make_tiny_clip(clip_dir, projection_dim=20, seed=6)
    course = read_flagfile(str(CONFIG), Config)
    config = dataclasses.replace(
        course, workdir=str(tmp_path / "run"), clip_model=str(clip_dir), clip_cache_dir=str(tmp_path / "cache"),
        image_size=16, down_chs=(32, 32, 64), dtype="float32", batch_size=8, num_steps=2, log_every=1,
        checkpoint_every=2, warmup_steps=1, timesteps=20, sample_every=0, sample_guidance=(1.0,),
        sample_columns=2, sampler="ddim", sampling_steps=2, random_flip=False, context_drop="sample")
    with tfds.testing.mock_data(num_examples=16):
        result = train_and_evaluate(config)
    assert result.step == 2 and np.isfinite(result.metrics["loss"])

    info = read_run_info(config.workdir)
    assert info.context_dim == 20 and {"daisy", "rose", "sunflower"} <= set(info.class_names)
    [manifest_path] = (tmp_path / "cache").glob("clip_cache/*/image/manifest.json")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["dataset"].startswith("tfds-tf_flowers-") and manifest["dataset"].endswith("-train-16px")
    assert manifest["count"] == 16 and manifest["finished_shards"] == [0]
    # flags.txt holds the flags with what the first start fixes filled in (the schedule length).
    assert read_flagfile(str(Path(config.workdir) / "flags.txt"), Config) == config.resolved()
    assert list((Path(config.workdir) / "samples").glob("step_*.png"))
