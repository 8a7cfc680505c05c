"""A trainer's command line run in a process of its own, for the tests that need real processes.

    python tests/trainer_process.py clip_ddpm.train [--signal=STEP:NAME] [--record_slice=PATH] -- FLAGS...

runs `python -m clip_ddpm.train FLAGS...` unchanged, with two optional hooks a test cannot add
from outside at a precise moment:

--signal=STEP:NAME   once this process has dispatched step STEP, it sends itself the signal
                     NAME: TERM, as a scheduler preempting it would; KILL, as kill -9 would
                     (first waiting until a checkpoint has been completely written, so the
                     restart has one to resume from); or STOP, to freeze while a test looks.
--record_slice=PATH  writes a digest of every training image this process loaded (its slice of
                     the dataset) to PATH as JSON.

`start` and `finish` are how tests launch it: with its own device count, the test session's
persistent compilation cache (so a program the test process compiled is not compiled again),
and this checkout first on the path.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


SMOKE = os.path.join(REPO, "experiments", "configs", "smoke.cfg")
# The environment variable naming a directory shared by every worker of a test session
# (conftest.py makes it); the reference run below is trained there once.
SHARED_ENV = "CLIP_DDPM_TEST_SHARED"
# The settings of the reference run below, shared by every test that compares with it so that
# they compile its program once. Adam's epsilon 1e-3 and a learning rate of 1e-4 keep rounding
# differences between device layouts from growing (see tests/test_multihost.py).
STEADY = {"num_steps": 10, "learning_rate": 1e-4, "adam_eps": 1e-3}


def steady_flags(workdir, *extra: str) -> list[str]:
    """The command-line flags of the reference run, in `workdir`."""
    return [f"--flagfile={SMOKE}", f"--workdir={workdir}", *(f"--{k}={v}" for k, v in STEADY.items()), *extra]


@functools.lru_cache(maxsize=None)
def steady_reference() -> str:
    """The workdir of smoke.cfg trained with STEADY, never stopped, in this process (4 devices):
    trained once per test session, by whichever worker asks first, and read by every test that
    compares with it (on any worker: the session's shared directory, under a lock)."""
    import fcntl

    from clip_ddpm.ddpm.config import Config
    from clip_ddpm.ddpm.trainer import train_and_evaluate
    from clip_ddpm.training.flags import read_flagfile

    shared = os.environ.get(SHARED_ENV)
    if not shared:
        import atexit

        shared = tempfile.mkdtemp(prefix="steady_reference_")
        atexit.register(shutil.rmtree, shared, ignore_errors=True)
    root = os.path.join(shared, "steady_reference")
    workdir, finished = os.path.join(root, "run"), os.path.join(root, "finished")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker training it: wait for it
        if not os.path.exists(finished):
            shutil.rmtree(workdir, ignore_errors=True)  # what a failed attempt left
            config = dataclasses.replace(read_flagfile(SMOKE, Config), workdir=workdir, **STEADY)
            assert train_and_evaluate(config).step == STEADY["num_steps"]
            open(finished, "w").close()
    return workdir


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def start(module: str, flags: list[str], options: tuple[str, ...] = (), devices: int = 4) -> subprocess.Popen:
    """This script run in a new process (`options` are its hooks, `flags` the command's)."""
    import jax

    # The suite's XLA flags (conftest.py), with this process's own device count.
    xla_flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS=" ".join([f"--xla_force_host_platform_device_count={devices}", *xla_flags]),
               PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    cache = jax.config.jax_compilation_cache_dir
    if cache:
        env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    log = tempfile.TemporaryFile("w+", encoding="utf-8")  # not a pipe: a full pipe would block the process
    process = subprocess.Popen([sys.executable, os.path.abspath(__file__), module, *options, "--", *flags],
                               cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    process.log = log
    return process


def finish(processes: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str]]:
    """(exit status, output) of each process, once all have ended (all killed after `timeout` s)."""
    deadline, results = time.time() + timeout, []
    for process in processes:
        try:
            process.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            process.wait()
        process.log.seek(0)
        results.append((process.returncode, process.log.read()))
        process.log.close()
    return results


def _finished_checkpoint(workdir: str) -> bool:
    directory = os.path.join(workdir, "checkpoints")
    return os.path.isdir(directory) and any(
        name.isdigit() and os.path.isfile(os.path.join(directory, name, "_CHECKPOINT_METADATA"))
        for name in os.listdir(directory))


def _add_signal(trainer, at_step: int, name: str, workdir: str) -> None:
    signum = getattr(signal, f"SIG{name}")
    run_loop = trainer.run_loop

    def patched(state, iteration, *args, **kwargs):
        step = int(state.step)

        def counted(current):
            nonlocal step
            out = iteration(current)
            step += 1
            if step == at_step:
                if signum == signal.SIGKILL:
                    deadline = time.time() + 60
                    while not _finished_checkpoint(workdir) and time.time() < deadline:
                        time.sleep(0.05)
                os.kill(os.getpid(), signum)
            return out

        return run_loop(state, counted, *args, **kwargs)

    trainer.run_loop = patched


def _add_slice_record(trainer, path: str) -> None:
    load_split = trainer.load_split

    def patched(config, split="train", *args, **kwargs):
        dataset = load_split(config, split, *args, **kwargs)
        if split == "train":
            with open(path, "w", encoding="utf-8") as handle:
                json.dump([hashlib.sha1(image.tobytes()).hexdigest() for image in dataset.images], handle)
        return dataset

    trainer.load_split = patched


def main(argv: list[str]) -> None:
    split = argv.index("--")
    module, options, flags = argv[1], argv[2:split], argv[split + 1:]
    entry = importlib.import_module(module)  # defines the command's flags
    trainer = importlib.import_module({"clip_ddpm.train": "clip_ddpm.ddpm.trainer",
                                       "clip_ddpm.train_clip": "clip_ddpm.clip.train.trainer"}[module])
    workdir = next((f.split("=", 1)[1] for f in flags if f.startswith("--workdir=")), "")
    for option in options:
        name, value = option.lstrip("-").split("=", 1)
        if name == "signal":
            step, signame = value.split(":")
            _add_signal(trainer, int(step), signame, workdir)
        elif name == "record_slice":
            _add_slice_record(trainer, value)
        else:
            raise SystemExit(f"unknown option {option}")
    from clip_ddpm.cli import run_app

    run_app(entry.main, argv=[module, *flags])


if __name__ == "__main__":
    main(sys.argv)
