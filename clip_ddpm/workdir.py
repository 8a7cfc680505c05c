"""The run directory: checked before anything is written, so a failed start loses nothing."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from clip_ddpm import config as config_lib
from clip_ddpm.errors import UserError


def flags_path(workdir: str) -> str:
    return os.path.join(workdir, config_lib.FLAGS_FILENAME)


def check_workdir(config: Any, resumable: frozenset[str] = config_lib.RESUMABLE_FIELDS) -> bool:
    """Makes sure the workdir can be written and, if it holds a run, that this is the same run.

    Returns True when an earlier run's flags.txt is there (the run resumes).
    Raises UserError for an unwritable directory or a run with different flags.
    """
    workdir = config.workdir
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir {workdir} exists and is not a directory")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create --workdir {workdir}: {error.strerror}") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise UserError(f"--workdir {workdir} is not writable")
    path = flags_path(workdir)
    if not os.path.exists(path):
        return False
    saved = config_lib.read_flagfile(path, type(config))
    conflicts = config_lib.resume_conflicts(saved, config, resumable)
    if conflicts:
        shown = "; ".join(conflicts[:3]) + (f"; and {len(conflicts) - 3} more" if len(conflicts) > 3 else "")
        raise UserError(f"--workdir {workdir} holds a run with different settings ({shown}); "
                        "use a new --workdir or the saved flags")
    return True


def write_flags(config: Any) -> None:
    """Writes the resolved flags (atomically, so a crash never leaves half a file)."""
    path = flags_path(config.workdir)
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(config_lib.to_flagfile_text(config))
    os.replace(temporary, path)


RUN_INFO_FILENAME = "run_info.json"


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What sampling needs beyond flags.txt and cannot cheaply recompute (it would have to load
    the dataset): the context width and the class names the model was trained with."""

    context_dim: int
    class_names: tuple[str, ...]
    condition: str


def write_run_info(workdir: str, info: RunInfo) -> None:
    with open(os.path.join(workdir, RUN_INFO_FILENAME), "w", encoding="utf-8") as handle:
        json.dump(dataclasses.asdict(info), handle, indent=1)


def read_run_info(workdir: str) -> RunInfo:
    path = os.path.join(workdir, RUN_INFO_FILENAME)
    if not os.path.isfile(path):
        raise UserError(f"{workdir} holds no trained run ({RUN_INFO_FILENAME} is missing)")
    with open(path, encoding="utf-8") as handle:
        raw = json.load(handle)
    return RunInfo(context_dim=int(raw["context_dim"]), class_names=tuple(raw["class_names"]),
                   condition=raw["condition"])
