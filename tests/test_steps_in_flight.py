"""A CPU split into two XLA devices trains hundreds of steps between two looks at the host
without deadlocking: the loop keeps only a few steps in flight (clip_ddpm.training.in_flight).
With the bound removed, this test failed in 2 runs of 2 (and an earlier form of it, at batch 8
with the suite's cheap compile, in 3 of 3): "Expected 2 threads to join the rendezvous, but only
1 of them arrived", once more than 32 steps were queued per device."""
from __future__ import annotations

import os

from trainer_process import SMOKE, finish, start

STEPS = 300


def test_long_stretch_without_logging_on_two_cpu_devices_does_not_deadlock(tmp_path, monkeypatch):
    # XLA's usual optimisation, not the suite's cheap compile: the steps run faster than the host
    # dispatches them, as in real training, and take a second, not half a minute. XLA aborts a
    # collective stuck for 8 s instead of 40: a deadlock fails the test quickly.
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_collective_call_warn_stuck_timeout_seconds=4"
                       " --xla_cpu_collective_call_terminate_timeout_seconds=8")
    flags = [f"--flagfile={SMOKE}", f"--workdir={tmp_path / 'run'}", "--batch_size=2", "--sample_columns=0",
             f"--num_steps={STEPS}", f"--log_every={STEPS}", f"--checkpoint_every={STEPS}", "--sample_every=0"]
    [(status, output)] = finish([start("clip_ddpm.train", flags, devices=2)], timeout=240)
    assert status == 0, output[-3000:]
    assert "rendezvous" not in output
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == [str(STEPS)]
