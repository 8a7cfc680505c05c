"""python experiments/no_text_labels.py --flagfile=experiments/configs/shapes_study_cpu.cfg

The "no text labels" study: trains the variants (text, image, image_noise, image_gapshift,
class, none, image_elementwise), samples them from text prompts, scores them with an oracle and
writes W/report.md, W/results.csv and W/results.json. Rerunning it resumes; a finished study only
gets its report written again. The command only parses flags and calls `run_study`.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from experiments.study.config import define_study_flags  # noqa: E402

define_study_flags(flags.FLAGS)


def main(argv: list[str]) -> None:
    import functools

    from clip_ddpm.cli import run_command

    @functools.cache  # read by both `batch_sizes` and the command
    def setup():
        from experiments.study.config import setup_from_flags

        return setup_from_flags(flags.FLAGS)

    def command():
        from experiments.study.runner import run_study

        return run_study(setup())

    # The CPU is split into devices that divide the DDPM's and the CLIP's training batches.
    run_command(argv, command, batch_sizes=lambda: [setup().ddpm.batch_size, setup().clip.batch_size])


if __name__ == "__main__":
    app.run(main)
