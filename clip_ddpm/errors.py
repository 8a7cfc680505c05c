"""User-facing errors: one clear line and a non-zero exit, never a traceback for bad input."""
from __future__ import annotations

import sys
from typing import NoReturn


class UserError(Exception):
    """Bad input from the user (flags, files, workdir, datasets, checkpoints).

    Every subsystem's "cannot use this input" error derives from it, so the command-line entry
    points can print its message as one line and exit non-zero.
    """


def exit_with_error(message: str, code: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)
