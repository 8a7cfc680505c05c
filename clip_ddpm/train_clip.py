"""python -m clip_ddpm.train_clip --flagfile=experiments/configs/shapes_clip_cpu.cfg

Trains a small CLIP contrastively on captioned images and saves it for transformers and for
the DDPM trainer's --clip_model. The command line only parses flags and calls
`clip.train.trainer.train_clip_and_evaluate(config)`, which tests call directly.
"""
from __future__ import annotations

from absl import flags

from clip_ddpm.cli import run_app, trainer_main
from clip_ddpm.clip.train.config import ClipTrainConfig
from clip_ddpm.training.flags import define_flags

define_flags(flags.FLAGS, ClipTrainConfig)
main = trainer_main(ClipTrainConfig, "clip_ddpm.clip.train.trainer:train_clip_and_evaluate")

if __name__ == "__main__":
    run_app(main)
