"""The persistent compilation cache: where it lives, that a second run of a command compiles
nothing new, and that the run-once compiler options leave the initialised parameters as they were."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from clip_ddpm.models.unet import GELUConv
from clip_ddpm.training import compilation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cache_directory_follows_the_environment(monkeypatch, tmp_path):
    for name in (compilation.CACHE_ENV, "CLIP_DDPM_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert compilation.cache_directory() == str(tmp_path / ".cache" / "clip_ddpm" / "compilation")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compilation.cache_directory() == str(tmp_path / "xdg" / "clip_ddpm" / "compilation")
    monkeypatch.setenv("CLIP_DDPM_CACHE", str(tmp_path / "root"))
    assert compilation.cache_directory() == str(tmp_path / "root" / "compilation")
    monkeypatch.setenv(compilation.CACHE_ENV, str(tmp_path / "mine"))
    assert compilation.cache_directory() == str(tmp_path / "mine")
    monkeypatch.setenv(compilation.CACHE_ENV, "off")
    assert compilation.cache_directory() is None


def test_a_second_training_run_compiles_nothing_new(tmp_path):
    cache = tmp_path / "cache"
    env = dict(os.environ, JAX_PLATFORMS="cpu", **{compilation.CACHE_ENV: str(cache)})
    env.pop("JAX_COMPILATION_CACHE_DIR", None)

    def train(workdir):
        command = [sys.executable, "-m", "clip_ddpm.train", "--flagfile=experiments/configs/smoke.cfg",
                   f"--workdir={workdir}", "--num_steps=2", "--log_every=1", "--checkpoint_every=2",
                   "--sample_columns=0"]
        subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, text=True)
        return set(os.listdir(cache))

    def programs(names):  # entry names are <program>-<hash of program, versions, flags>-cache
        return {name.rsplit("-", 2)[0] for name in names}

    first = train(tmp_path / "a")
    # The train step and the parameter initialiser are stored (with whatever else took >1 s) ...
    assert {"jit_step", "jit_init_state"} <= programs(first), sorted(first)
    # ... and a fresh run of the same configuration finds them there: nothing stored in the
    # first run is compiled and stored again under another key.
    new = train(tmp_path / "b") - first
    assert not programs(new) & programs(first), sorted(new)


def test_run_once_options_give_the_same_parameters():
    model = GELUConv(64, 32)  # a lecun-normal kernel, zero bias, GroupNorm ones and zeros
    args = (jax.random.key(0), jnp.zeros((1, 8, 8, 16)))
    fast = jax.jit(model.init, compiler_options=compilation.run_once_options())(*args)
    plain = jax.jit(model.init)(*args)
    for a, b in zip(jax.tree_util.tree_leaves(fast), jax.tree_util.tree_leaves(plain)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
