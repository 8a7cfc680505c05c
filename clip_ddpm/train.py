"""python -m clip_ddpm.train --flagfile=experiments/configs/shapes_cpu.cfg

Trains the context-conditioned DDPM. The command line only parses flags and calls
`train_and_evaluate(config)`, which tests call directly.
"""
from __future__ import annotations

from absl import app, flags

from clip_ddpm.ddpm import config as config_lib
from clip_ddpm.errors import run_command

config_lib.define_flags(flags.FLAGS)


def main(argv: list[str]) -> None:
    def command():
        from clip_ddpm.ddpm.trainer import train_and_evaluate  # heavy imports after flag parsing
        return train_and_evaluate(config_lib.from_flags(flags.FLAGS).validate())

    run_command(argv, command)


if __name__ == "__main__":
    app.run(main)
