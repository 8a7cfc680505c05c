"""Divergence: a run that went well for six steps is resumed with an absurd learning rate (the
learning rate may change on resume), which makes the loss and parameters overflow. It stops at
the first non-finite step whatever its log and checkpoint schedule, never writes a non-finite
state, and the advice it gives (resume with a lower learning rate) leads back to the run that
never diverged, bit for bit."""
from __future__ import annotations

import dataclasses
import os
import re
import shutil

import jax
import numpy as np
import pytest
from test_multihost import saved_state
from trainer_process import SMOKE, STEADY, steady_reference

from clip_ddpm.ddpm.config import Config
from clip_ddpm.ddpm.trainer import train_and_evaluate
from clip_ddpm.training.checkpoints import Checkpoints
from clip_ddpm.training.flags import read_flagfile
from clip_ddpm.training.guard import TrainingDivergedError

# Adam moves every parameter by about the learning rate per step: this overflows within a step or two.
ABSURD = 1e12
GOOD = 6  # the reference run's checkpoint the diverging runs resume from


def _good_run(target) -> str:
    """A copy of the reference run with only its checkpoint of step GOOD."""
    shutil.copytree(steady_reference(), target)
    for step in os.listdir(target / "checkpoints"):
        if int(step) != GOOD:
            shutil.rmtree(target / "checkpoints" / step)
    return str(target)


def _config(workdir, **overrides) -> Config:
    return dataclasses.replace(read_flagfile(SMOKE, Config), workdir=str(workdir), **{**STEADY, **overrides})


def _checkpoints(workdir) -> dict[int, dict]:
    checkpoints = Checkpoints(str(workdir), create=False)
    steps = checkpoints.all_steps
    checkpoints.close()
    states = {step: saved_state(workdir, step)[1] for step in steps}
    assert all(len(jax.tree_util.tree_leaves(state["params"])) > 10 for state in states.values())
    return states


def _all_finite(state) -> bool:
    return all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(state) if np.issubdtype(x.dtype, np.floating))


def _diverge(workdir, **overrides) -> tuple[int, str]:
    with pytest.raises(TrainingDivergedError) as error:
        train_and_evaluate(_config(workdir, learning_rate=ABSURD, **overrides))
    message = str(error.value)
    return int(re.search(r"at step (\d+)", message).group(1)), message


def test_stop_names_the_first_non_finite_step_and_saves_only_finite_states(tmp_path):
    every_step = _good_run(tmp_path / "every_step")
    first_bad, message = _diverge(every_step, log_every=1, checkpoint_every=1, keep_checkpoints=20)
    assert GOOD < first_bad <= STEADY["num_steps"], message
    assert re.match(r"(loss|grad_norm|param_norm) is (nan|inf|-inf) at step", message), message
    saved = _checkpoints(every_step)
    # Checked before every save: each state up to the bad one was saved, and none after it.
    assert sorted(saved) == list(range(GOOD, first_bad))
    assert all(_all_finite(state) for state in saved.values())

    # Looking only every 5 steps and saving every 4 finds the same step, and did not write the
    # checkpoint that fell due after it.
    sparse = _good_run(tmp_path / "sparse")
    step, message = _diverge(sparse, log_every=5, checkpoint_every=4)
    assert step == first_bad, message
    saved = _checkpoints(sparse)
    assert all(_all_finite(state) for state in saved.values()) and max(saved) < first_bad
    assert f"latest checkpoint (step {max(saved)})" in message and "--learning_rate" in message

    # The advice can be followed: the same command with the learning rate lowered back continues
    # from the last good checkpoint, and ends where the run that never diverged ends.
    for late in [s for s in saved if s > GOOD]:  # finite, but possibly already ruined by the update
        shutil.rmtree(os.path.join(sparse, "checkpoints", str(late)))
    result = train_and_evaluate(_config(sparse))
    assert result.step == STEADY["num_steps"]
    for a, b in zip(jax.tree_util.tree_leaves(saved_state(sparse)[1]),
                    jax.tree_util.tree_leaves(saved_state(steady_reference())[1])):
        np.testing.assert_array_equal(a, b)


def test_skip_leaves_the_state_as_it_was_and_stops_after_n_in_a_row(tmp_path):
    workdir = _good_run(tmp_path / "skip")
    step, message = _diverge(workdir, on_nonfinite="skip", max_nonfinite_steps=2, log_every=1,
                             checkpoint_every=1, keep_checkpoints=20)
    assert "2 steps in a row" in message, message
    first = int(re.search(r"steps (\d+) to (\d+)", message).group(1))
    assert step == first + 1 and first > GOOD
    saved = _checkpoints(workdir)
    # Skipping keeps the state finite, so every step was saved until the run gave up.
    assert sorted(saved) == list(range(GOOD, step))
    assert all(_all_finite(state) for state in saved.values())
    # The skipped steps advanced the counter and changed nothing else.
    for skipped in range(first, step):
        assert int(saved[skipped]["step"]) == skipped
        for name in ("params", "ema_params", "opt_state"):
            jax.tree_util.tree_map(np.testing.assert_array_equal, saved[skipped][name], saved[first - 1][name])


def test_learning_rate_and_clip_may_change_on_resume_and_keep_the_checkpoint_format():
    from clip_ddpm.training.flags import resume_conflicts
    from clip_ddpm.training.train_state import OptimizerSettings, create_train_state, make_optimizer

    saved = _config("run")
    lowered = dataclasses.replace(saved, learning_rate=saved.learning_rate / 10, grad_clip=0.0)
    assert resume_conflicts(saved, lowered) == []
    assert resume_conflicts(saved, dataclasses.replace(saved, weight_decay=0.1)) != []
    # With and without a clip the optimiser state has one structure, so either restores the other's checkpoints.
    params = {"w": np.zeros((3, 2), np.float32), "b": np.zeros((2,), np.float32)}
    structures = {jax.tree_util.tree_structure(jax.eval_shape(lambda: create_train_state(
        params, make_optimizer(OptimizerSettings.create(1e-3, 10, 2, 0.0, clip))))) for clip in (0.0, 0.5, 1.0)}
    assert len(structures) == 1
