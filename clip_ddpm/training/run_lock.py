"""One trainer per workdir: a lock file naming the process that holds the run.

Two trainers on one workdir would interleave their checkpoints and overwrite each other's
flags and logs. The first to start creates `workdir/trainer.lock` (exclusively, holding its pid
and host); a second refuses to start, naming them. A lock left by a process that died without
cleaning up (kill -9, a crashed machine) on this same host is recognised as stale, since that
pid no longer runs, and taken over with a warning; a lock from another host cannot be checked
from here, so it is only ever removed by hand. In a multi-host job only process 0 takes it:
the workdir is shared, and one lock stands for the whole job.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
from typing import Iterator

from absl import logging

from clip_ddpm.errors import UserError

LOCK_FILENAME = "trainer.lock"


def _process_running(pid: int) -> bool:
    """Whether `pid` is a live process on this host (a zombie, dead but not reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _read_holder(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as handle:
            holder = json.load(handle)
        return holder if isinstance(holder, dict) and {"pid", "host"} <= holder.keys() else None
    except (OSError, ValueError):
        return None


def acquire(workdir: str) -> str:
    """Creates the lock of `workdir` for this process, taking over a stale one; returns its path.

    Raises UserError when another live trainer holds it (or the lock file cannot be read).
    """
    path = os.path.join(workdir, LOCK_FILENAME)
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(3):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_holder(path)
            if holder is None:
                raise UserError(f"--workdir {workdir} has a lock file {path} that cannot be read; if no trainer "
                                "runs there, delete it") from None
            if holder == me:  # an earlier run of this very process, which ended without releasing it
                return path
            if holder["host"] != me["host"] or _process_running(int(holder["pid"])):
                raise UserError(f"--workdir {workdir} is in use by another trainer (pid {holder['pid']} on host "
                                f"{holder['host']}); wait for it to end or use another --workdir (if no such "
                                f"trainer runs, delete {path})") from None
            logging.warning("taking over the stale lock of %s: process %s on this host (%s) no longer runs",
                            workdir, holder["pid"], holder["host"])
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            continue
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(me, handle)
        return path
    raise UserError(f"--workdir {workdir}: could not take its lock {path} (another trainer keeps taking it)")


def release(path: str) -> None:
    """Removes the lock if this process still holds it."""
    if _read_holder(path) == {"pid": os.getpid(), "host": socket.gethostname()}:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


@contextlib.contextmanager
def holding_workdir(workdir: str, is_chief: bool) -> Iterator[None]:
    """The lock of `workdir` held (by the chief; the decision is every process's) for the block."""
    from clip_ddpm.training.parallel import decided_together

    path = None
    with decided_together("taking the lock of --workdir"):
        if is_chief:
            path = acquire(workdir)
    try:
        yield
    finally:
        if path is not None:
            release(path)
