"""Every test sees 4 CPU devices, so data-parallel code paths run for real."""
import os
import shutil
import tempfile

# Tests run each compiled program a few times at tiny sizes, so compiling cheaply matters more
# than fast code: LLVM's optimisation of XLA:CPU's kernels is most of a test's compile time, and
# XLA:CPU's older elemental emitters generate a train step's kernels faster than its fusion
# emitters (smoke.cfg's step: about 12 s -> 9 s to compile on two cores).
# Subprocesses started by tests inherit these flags (and the flags are part of the cache key).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    " --xla_cpu_use_fusion_emitters=false"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update("jax_threefry_partitionable", True)

# Tests build the same small programs many times (every training run compiles its step and
# sampler afresh); a persistent compilation cache shared by the session compiles each once.
_TEST_CACHE = os.environ.get("CLIP_DDPM_TEST_JAX_CACHE", os.path.join(tempfile.gettempdir(), "clip_ddpm_test_jax_cache"))
jax.config.update("jax_compilation_cache_dir", _TEST_CACHE)
# Commands that tests start as subprocesses use it too, not the user's cache directory.
os.environ.setdefault("CLIP_DDPM_COMPILATION_CACHE", _TEST_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# With `-n 2 --dist loadfile` each worker takes the next file in collection order as it frees up,
# so a long file collected last keeps one worker busy while the other idles. The files that
# start training processes (a minute or two each on two cores) are collected first, longest
# first; the rest follow in their usual order.
_LONGEST_FIRST = (
    "test_train_cli.py", "test_multihost.py", "test_study.py", "test_crash_and_resume.py", "test_benchmarks.py",
    "test_steps_in_flight.py", "test_study_gpu_config.py", "test_study_flowers.py", "test_samplers.py", "test_divergence.py",
    "test_clip_training.py", "test_clip_conditioning.py", "test_compilation.py", "test_multihost_clip.py",
    "test_unet.py", "test_parallel.py", "test_clip_parity.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


# A directory shared by every worker of one test session, for results that are costly to make and
# the same on every worker (the reference training run in trainer_process.py). The controlling
# process makes it before the workers start (they inherit the variable) and removes it at the end.
from trainer_process import SHARED_ENV  # noqa: E402


def pytest_configure(config):
    if not hasattr(config, "workerinput") and SHARED_ENV not in os.environ:
        os.environ[SHARED_ENV] = config.clip_ddpm_shared = tempfile.mkdtemp(prefix="clip_ddpm_tests_")


def pytest_unconfigure(config):
    shared = getattr(config, "clip_ddpm_shared", None)
    if shared:
        shutil.rmtree(shared, ignore_errors=True)
        os.environ.pop(SHARED_ENV, None)
