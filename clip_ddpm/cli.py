"""Log hygiene for the command-line tools: our messages at INFO, libraries' chatter hidden."""
from __future__ import annotations

import logging as std_logging

from absl import logging

_NOISY_LIBRARIES = ("orbax", "etils", "jax/_src")


class _QuietLibraries(std_logging.Filter):
    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.levelno >= std_logging.WARNING:
            return True
        return not any(name in record.pathname for name in _NOISY_LIBRARIES)


def quiet_library_logs() -> None:
    """Drops INFO records of checkpointing and JAX internals (orbax logs every file it moves)."""
    logging.get_absl_handler().addFilter(_QuietLibraries())
    logging.set_verbosity(logging.INFO)
