"""python -m clip_ddpm.train_clip --flagfile=experiments/configs/shapes_clip_cpu.cfg

Trains a small CLIP contrastively on captioned images and saves it for transformers and for
the DDPM trainer's --clip_model. The command line only parses flags and calls
`train_clip_and_evaluate(config)`, which tests call directly.
"""
from __future__ import annotations

from absl import app, flags

from clip_ddpm.ddpm import config as config_lib
from clip_ddpm.clip.train.config import ClipTrainConfig
from clip_ddpm.errors import run_command

config_lib.define_flags(flags.FLAGS, ClipTrainConfig)


def main(argv: list[str]) -> None:
    def command():
        from clip_ddpm.clip.train.trainer import train_clip_and_evaluate  # heavy imports after flag parsing
        return train_clip_and_evaluate(config_lib.from_flags(flags.FLAGS, ClipTrainConfig).validate())

    run_command(argv, command)


if __name__ == "__main__":
    app.run(main)
