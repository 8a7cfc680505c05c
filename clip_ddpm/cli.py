"""What every `python -m clip_ddpm.X` command does around its work: refuse stray arguments, keep
the libraries' chatter out of the log, and report bad input as one line with a non-zero exit."""
from __future__ import annotations

import functools
import logging as std_logging
from typing import Callable, Sequence

from clip_ddpm.errors import UserError, exit_with_error
from clip_ddpm.training.compilation import enable_compilation_cache
from clip_ddpm.training.host_devices import split_cpu_into_devices

_NOISY_LIBRARIES = ("orbax", "etils", "jax/_src")


class _QuietLibraries(std_logging.Filter):
    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.levelno >= std_logging.WARNING:
            return True
        return not any(name in record.pathname for name in _NOISY_LIBRARIES)


def quiet_library_logs() -> None:
    """Drops INFO records of checkpointing and JAX internals (orbax logs every file it moves)."""
    from absl import logging

    logging.get_absl_handler().addFilter(_QuietLibraries())
    logging.set_verbosity(logging.INFO)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad command line (an unknown flag, a value of the wrong type,
    a flagfile that is missing or unreadable) reported as one `error:` line and exit status 2."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        message = " ".join(str(error).split()).replace("ERROR:: ", "")
        exit_with_error(f"{message} (see --helpshort)")


def run_app(main: Callable[[list[str]], None], argv: list[str] | None = None) -> None:
    """What `if __name__ == "__main__"` of every entry point does: absl's app.run with
    `parse_flags`."""
    from absl import app

    app.run(main, argv=argv, flags_parser=parse_flags)


def run_command(argv: list[str], command: Callable[[], object],
                batch_sizes: Callable[[], Sequence[int]] = tuple) -> None:
    """The body of every entry point's main(): refuse stray arguments, hide the libraries' INFO
    chatter, keep compiled programs for the next run (training/compilation.py), split the CPU
    into one device per core so that each of `batch_sizes()` divides evenly
    (training/host_devices.py), and report a UserError as one line with exit status 2."""
    from absl import app

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    quiet_library_logs()
    enable_compilation_cache()
    try:
        split_cpu_into_devices(batch_sizes())
        command()
    except UserError as error:
        exit_with_error(str(error))


def trainer_main(config_class: type, trainer: str) -> Callable[[list[str]], None]:
    """The main() of a trainer's entry point: the parsed flags as a validated `config_class`,
    passed to `trainer` ("module:function"), which is imported only then, so parsing the flags
    (and --help) never waits for the numerical libraries."""
    def main(argv: list[str]) -> None:
        @functools.cache  # read by both `batch_sizes` and the command
        def config():
            from absl import flags

            from clip_ddpm.training.flags import from_flags

            return from_flags(flags.FLAGS, config_class).validate()

        def command():
            import importlib

            module, function = trainer.split(":")
            return getattr(importlib.import_module(module), function)(config())

        run_command(argv, command, batch_sizes=lambda: [config().batch_size])

    return main
