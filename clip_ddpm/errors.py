"""User-facing errors: one clear line and a non-zero exit, never a traceback for bad input."""
from __future__ import annotations

import sys
from typing import Callable, NoReturn


class UserError(Exception):
    """Bad input from the user (flags, files, workdir, datasets, checkpoints).

    Every subsystem's "cannot use this input" error derives from it, so the command-line entry
    points can print its message as one line and exit non-zero.
    """


def exit_with_error(message: str, code: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def run_reporting_user_errors(fn: Callable[[], object]) -> None:
    """Calls fn; a UserError becomes one line on stderr and exit status 2."""
    try:
        fn()
    except UserError as error:
        exit_with_error(str(error))


def run_command(argv: list[str], command: Callable[[], object]) -> None:
    """The body of every entry point's main(): refuse stray arguments, hide the libraries' INFO
    chatter, and report a UserError as one line with exit status 2."""
    from absl import app

    from clip_ddpm.cli import quiet_library_logs

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    quiet_library_logs()
    run_reporting_user_errors(command)
