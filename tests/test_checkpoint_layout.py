"""A checkpoint whose training state is laid out otherwise (written by a version whose optimiser
kept one Adam moment per parameter array) is refused with one clear error, not taken for a
damaged checkpoint and set aside; a checkpoint of the current layout resumes."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from clip_ddpm.errors import UserError
from clip_ddpm.training import parallel
from clip_ddpm.training.checkpoints import DAMAGED_DIRNAME, Checkpoints
from clip_ddpm.training.train_state import OptimizerSettings, create_train_state, make_optimizer

PARAMS = {"dense": {"kernel": np.ones((3, 2), np.float32), "bias": np.zeros((2,), np.float32)},
          "scale": np.ones((4,), np.float32)}
SETTINGS = OptimizerSettings.create(1e-3, 10, 0, 0.0, 1.0)


def _leafwise_adamw() -> optax.GradientTransformation:
    """The optimiser as earlier versions built it: clip and AdamW on every array separately."""
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))


def _save(workdir, optimizer: optax.GradientTransformation) -> None:
    checkpoints = Checkpoints(str(workdir))
    state = create_train_state(jax.tree_util.tree_map(jnp.asarray, PARAMS), optimizer)
    checkpoints.save(4, state.replace(step=jnp.asarray(4, jnp.int32)))
    checkpoints.close()


def _resume(workdir):
    mesh = parallel.make_mesh(jax.devices()[:1])
    checkpoints = Checkpoints(str(workdir))
    try:
        return checkpoints.restore_or_initialize(
            lambda: create_train_state(jax.tree_util.tree_map(jnp.asarray, PARAMS), make_optimizer(SETTINGS)),
            parallel.replicated(mesh))
    finally:
        checkpoints.close()


def test_a_state_of_another_layout_is_refused_and_left_in_place(tmp_path):
    _save(tmp_path, _leafwise_adamw())
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    with pytest.raises(UserError, match=r"step 4 .* laid out differently .*opt_state.*nothing was changed"):
        _resume(tmp_path)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before
    assert not (tmp_path / DAMAGED_DIRNAME).exists()


def test_a_state_of_this_layout_resumes(tmp_path):
    _save(tmp_path, make_optimizer(SETTINGS))
    assert int(_resume(tmp_path).step) == 4
