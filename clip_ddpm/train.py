"""python -m clip_ddpm.train --flagfile=experiments/configs/shapes_cpu.cfg

Trains the context-conditioned DDPM. The command line only parses flags and calls
`train_and_evaluate(config)`, which tests call directly.
"""
from __future__ import annotations

from absl import app, flags

from clip_ddpm import config as config_lib
from clip_ddpm.logs import quiet_library_logs
from clip_ddpm.errors import run_reporting_user_errors

config_lib.define_flags(flags.FLAGS)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    quiet_library_logs()
    from clip_ddpm.training import train_and_evaluate  # heavy imports after flag parsing

    run_reporting_user_errors(lambda: train_and_evaluate(config_lib.from_flags(flags.FLAGS).validate()))


if __name__ == "__main__":
    app.run(main)
