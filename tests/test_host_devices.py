"""Each command splits the CPU into one XLA device per core (at most 8), as many as divide its
training batch, before JAX starts; a device count the user set in $XLA_FLAGS is kept."""
import os
import re
import subprocess
import sys

import pytest

from clip_ddpm.training.host_devices import cpu_device_count, split_cpu_into_devices, usable_cores

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "experiments", "configs", "smoke.cfg")


@pytest.mark.parametrize("cores, batches, expected", [
    (2, [16], 2), (1, [16], 1), (6, [16], 4), (8, [12], 6), (4, [7], 1), (16, [], 8), (64, [64], 8),
    (4, [16, 6], 2), (3, [0], 3),
])
def test_device_count_divides_every_batch_within_the_cores(cores, batches, expected):
    assert cpu_device_count(cores, batches) == expected


def _without_device_count() -> dict[str, str]:
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f)
    return dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)


def _run_python(code: str, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


def test_the_flag_takes_effect_before_jax_starts_and_a_users_count_is_kept():
    code = ("from clip_ddpm.training.host_devices import split_cpu_into_devices as s; n = s([8]); import jax; "
            "print(n, jax.device_count(), s([8]))")
    chosen, seen, again = _run_python(code, _without_device_count())
    assert int(chosen) == int(seen) == cpu_device_count(usable_cores(), [8])
    assert again == "None"  # JAX has started: too late to change, left alone
    env = _without_device_count()
    env["XLA_FLAGS"] += " --xla_force_host_platform_device_count=3"
    assert _run_python(code, env)[:2] == ["None", "3"]


def test_in_a_process_where_jax_has_started_nothing_changes(monkeypatch):
    import jax

    jax.devices()
    monkeypatch.setenv("XLA_FLAGS", "")
    assert split_cpu_into_devices([8]) is None
    assert os.environ["XLA_FLAGS"] == ""


def test_the_trainer_splits_the_cpu_by_its_batch(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "clip_ddpm.train", f"--flagfile={SMOKE}", f"--workdir={tmp_path / 'run'}",
         "--num_steps=1", "--batch_size=6", "--sample_columns=0"],
        env=_without_device_count(), capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    devices = int(re.search(r"parameters; (\d+) devices;", done.stderr).group(1))
    assert devices == cpu_device_count(usable_cores(), [6])
