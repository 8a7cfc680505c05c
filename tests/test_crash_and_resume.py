"""Crashes and preemption on one host, with real processes: SIGTERM, kill -9, damaged checkpoints
and a second trainer on the same workdir. A run that is stopped and restarted, however it was
stopped, ends bit for bit where the run that was never stopped ends."""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import time

import jax
import numpy as np
import pytest
from test_multihost import saved_state
from trainer_process import STEADY, finish, start, steady_flags, steady_reference

from clip_ddpm.training.run_lock import LOCK_FILENAME

# smoke.cfg saves every 3 steps and keeps 3 checkpoints: 6, 9 and 10 at the end.
STEPS = STEADY["num_steps"]
_flags = steady_flags


def _assert_equal_states(a, b):
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def uninterrupted():
    """The run never stopped (in this process, 4 devices like the subprocesses)."""
    return pathlib.Path(steady_reference())


def test_preempted_then_killed_then_finished_equals_the_uninterrupted_run(tmp_path, uninterrupted):
    workdir = tmp_path / "run"
    # SIGTERM after step 4, with a grid due at every even step: checkpoint at 4, no grid, exit 0.
    [(status, output)] = finish([start("clip_ddpm.train", _flags(workdir, "--sample_every=2"),
                                       ("--signal=4:TERM",))])
    assert status == 0, output[-3000:]
    assert "SIGTERM received" in output
    assert sorted(int(s) for s in os.listdir(workdir / "checkpoints")) == [3, 4]
    assert (workdir / "samples" / "step_0000002.png").is_file()
    assert not (workdir / "samples" / "step_0000004.png").exists()

    # kill -9 at step 8 (once a checkpoint is complete): no chance to clean up, the lock stays.
    [(status, output)] = finish([start("clip_ddpm.train", _flags(workdir), ("--signal=8:KILL",))])
    assert status == -signal.SIGKILL, output[-3000:]
    assert "resumed from the checkpoint of step 4" in output
    lock = json.loads((workdir / LOCK_FILENAME).read_text())
    assert lock["host"] == socket.gethostname()

    # The same command again: takes over the dead process's lock, resumes, finishes.
    [(status, output)] = finish([start("clip_ddpm.train", _flags(workdir), ())])
    assert status == 0, output[-3000:]
    assert f"taking over the stale lock of {workdir}: process {lock['pid']}" in output
    resumed_from = int(output.split("resumed from the checkpoint of step ")[1].split()[0])
    assert resumed_from in (4, 6)
    assert not (workdir / LOCK_FILENAME).exists()
    _assert_equal_states(saved_state(workdir, STEPS)[1], saved_state(uninterrupted, STEPS)[1])


def _damage(step_dir, how):
    if how == "truncated":
        for data in (step_dir / "default" / "d").iterdir():
            data.write_bytes(data.read_bytes()[:10])
    elif how == "deleted":
        shutil.rmtree(step_dir / "default")


def test_damaged_checkpoints_fall_back_to_the_latest_good_one(tmp_path, uninterrupted):
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    checkpoints = workdir / "checkpoints"
    assert sorted(os.listdir(checkpoints)) == ["10", "6", "9"]
    _damage(checkpoints / "10", "truncated")
    _damage(checkpoints / "9", "deleted")
    half_written = checkpoints / "11.orbax-checkpoint-tmp-1234"  # a save killed before it finished
    shutil.copytree(checkpoints / "6", half_written)
    [(status, output)] = finish([start("clip_ddpm.train", _flags(workdir), ())])
    assert status == 0, output[-3000:]
    assert "the save of step 11 was cut short" in output
    for bad in (10, 9):
        assert f"the checkpoint of step {bad} cannot be restored" in output
    assert output.count("and the run resumes from step 6") == 2
    assert sorted(os.listdir(workdir / "damaged_checkpoints")) == ["10", "11.orbax-checkpoint-tmp-1234", "9"]
    # Resumed from step 6, it trains steps 7 to 10 again exactly as the first time.
    _assert_equal_states(saved_state(workdir, 10)[1], saved_state(uninterrupted, 10)[1])


def test_no_good_checkpoint_is_one_error_and_changes_nothing(tmp_path, uninterrupted):
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    for step in ("6", "9", "10"):
        _damage(workdir / "checkpoints" / step, "deleted")
    before = sorted((str(p.relative_to(workdir)), p.read_bytes() if p.is_file() else b"") for p in workdir.rglob("*"))
    [(status, output)] = finish([start("clip_ddpm.train", _flags(workdir), ())])
    assert status == 2, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no checkpoint in" in errors[0] and "can be restored" in errors[0], errors
    assert "Traceback" not in output
    after = sorted((str(p.relative_to(workdir)), p.read_bytes() if p.is_file() else b"") for p in workdir.rglob("*"))
    assert after == before


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
        return handle.read().rsplit(")", 1)[1].split()[0] == "T"


def test_a_second_trainer_on_the_same_workdir_refuses(tmp_path):
    workdir = tmp_path / "run"
    # The first trainer freezes itself (SIGSTOP) after step 2, holding the workdir.
    first = start("clip_ddpm.train", _flags(workdir), ("--signal=2:STOP",))
    deadline = time.time() + 300
    while first.poll() is None and not _stopped(first.pid) and time.time() < deadline:
        time.sleep(0.1)
    assert json.loads((workdir / LOCK_FILENAME).read_text())["pid"] == first.pid
    [(status, output)] = finish([start("clip_ddpm.train", _flags(workdir))])
    assert status == 2
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert errors == [f"error: --workdir {workdir} is in use by another trainer (pid {first.pid} on host "
                      f"{socket.gethostname()}); wait for it to end or use another --workdir (if no such trainer "
                      f"runs, delete {workdir / LOCK_FILENAME})"], output[-2000:]
    # The first one is unharmed: preempted from outside, it saves and leaves cleanly.
    first.send_signal(signal.SIGTERM)
    first.send_signal(signal.SIGCONT)
    [(status, output)] = finish([first])
    assert status == 0, output[-3000:]
    assert os.listdir(workdir / "checkpoints") == ["2"] and not (workdir / LOCK_FILENAME).exists()
