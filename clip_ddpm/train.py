"""python -m clip_ddpm.train --flagfile=experiments/configs/shapes_cpu.cfg

Trains the context-conditioned DDPM. The command line only parses flags and calls
`ddpm.trainer.train_and_evaluate(config)`, which tests call directly.
"""
from __future__ import annotations

from absl import flags

from clip_ddpm.cli import run_app, trainer_main
from clip_ddpm.ddpm.config import Config
from clip_ddpm.training.flags import define_flags

define_flags(flags.FLAGS, Config)
main = trainer_main(Config, "clip_ddpm.ddpm.trainer:train_and_evaluate")

if __name__ == "__main__":
    run_app(main)
