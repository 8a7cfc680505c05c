"""What the study's tests share: the configs, tiny DDPM overrides, a parser that turns study
command lines into a StudySetup without touching absl's global flags, and the tiny conditioning
CLIP (a fixture: import it into a test module to use it there)."""
from __future__ import annotations

from pathlib import Path

import pytest
from absl import flags
from clip_fixtures import make_tiny_clip

from experiments.study import config as study_config

ROOT = Path(__file__).resolve().parents[1]
CPU_CONFIG = ROOT / "experiments" / "configs" / "shapes_study_cpu.cfg"
GPU_CONFIG = ROOT / "experiments" / "configs" / "shapes_study_gpu.cfg"
FLOWERS_CONFIG = ROOT / "experiments" / "configs" / "flowers_study_gpu.cfg"
TINY_DDPM = ["--ddpm_image_size=16", "--ddpm_dataset_size=16", "--ddpm_down_chs=32,32,64", "--ddpm_batch_size=8",
             "--ddpm_num_steps=2", "--ddpm_warmup_steps=1", "--ddpm_log_every=1", "--ddpm_checkpoint_every=2",
             "--ddpm_timesteps=20", "--ddpm_sampling_steps=2", "--ddpm_dtype=float32", "--seeds=0", "--guidance=0,2", "--sampling_steps=2",
             "--validation_samples=1", "--test_samples=2", "--grid_prompts=2"]


def parse(*args: str) -> study_config.StudySetup:
    flag_values = flags.FlagValues()
    study_config.define_study_flags(flag_values)
    flag_values(["study", *args])
    return study_config.setup_from_flags(flag_values)


@pytest.fixture(scope="module")
def study_clip_dir(tmp_path_factory):
    """A tiny random CLIP for 16 px images, saved as transformers saves one."""
    directory = tmp_path_factory.mktemp("study_clip") / "clip"
    make_tiny_clip(directory, projection_dim=20, seed=4, vision={"image_size": 16})
    return directory
