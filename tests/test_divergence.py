"""Divergence: a run that goes well for four steps is resumed with an absurd learning rate (the
learning rate may change on resume), which makes the loss and parameters overflow. It stops at
the first non-finite step whatever its log and checkpoint schedule, never writes a non-finite
state, and the advice it gives (resume with a lower learning rate) works."""
from __future__ import annotations

import re
import shutil

import jax
import numpy as np
import pytest
from test_train_cli import smoke_config

from clip_ddpm.ddpm.trainer import train_and_evaluate
from clip_ddpm.training.checkpoints import Checkpoints
from clip_ddpm.training.guard import TrainingDivergedError

STEPS = 12
# Adam moves every parameter by about the learning rate per step: this overflows within a step or two.
ABSURD = 1e12


@pytest.fixture(scope="module")
def four_good_steps(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("good") / "run"
    result = train_and_evaluate(smoke_config(workdir, num_steps=STEPS, checkpoint_every=2), stop_at=4)
    assert result.step == 4
    return workdir


def _copy(source, target):
    shutil.copytree(source, target)
    return target


def _checkpoints(workdir) -> dict[int, dict]:
    checkpoints = Checkpoints(str(workdir), create=False)
    states = {step: checkpoints._manager.restore(step) for step in checkpoints.all_steps}
    checkpoints.close()
    assert all(len(jax.tree_util.tree_leaves(state["params"])) > 10 for state in states.values())
    return states


def _all_finite(state) -> bool:
    return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(state)
               if np.issubdtype(np.asarray(x).dtype, np.floating))


def _diverge(workdir, **overrides) -> tuple[int, str]:
    with pytest.raises(TrainingDivergedError) as error:
        train_and_evaluate(smoke_config(workdir, **{"num_steps": STEPS, "learning_rate": ABSURD, **overrides}))
    message = str(error.value)
    return int(re.search(r"at step (\d+)", message).group(1)), message


def test_stop_names_the_first_non_finite_step_and_saves_only_finite_states(tmp_path, four_good_steps):
    every_step = _copy(four_good_steps, tmp_path / "every_step")
    first_bad, message = _diverge(every_step, log_every=1, checkpoint_every=1, keep_checkpoints=20)
    assert 4 < first_bad <= STEPS, message
    assert re.match(r"(loss|grad_norm|param_norm) is (nan|inf|-inf) at step", message), message
    saved = _checkpoints(every_step)
    # Checked before every save: each state up to the bad one was saved, and none after it.
    assert sorted(saved) == [2, 4] + list(range(5, first_bad))
    assert all(_all_finite(state) for state in saved.values())

    # Looking only every 5 steps (and saving every 2) finds the same step, and did not write the
    # checkpoint that fell due after it.
    sparse = _copy(four_good_steps, tmp_path / "sparse")
    step, message = _diverge(sparse, log_every=5, checkpoint_every=2)
    assert step == first_bad, message
    saved = _checkpoints(sparse)
    assert max(saved) == 2 * ((first_bad - 1) // 2) and all(_all_finite(state) for state in saved.values())
    assert f"latest checkpoint (step {max(saved)})" in message and "--learning_rate" in message

    # The advice can be followed: the same workdir with a sane learning rate, and the run completes.
    if max(saved) > 4:  # a finite state past the last good step may already be ruined: go back to 4
        for step in [s for s in saved if s > 4]:
            shutil.rmtree(sparse / "checkpoints" / str(step))
    result = train_and_evaluate(smoke_config(sparse, num_steps=STEPS, log_every=5, checkpoint_every=2))
    assert result.step == STEPS and np.isfinite(result.metrics["loss"])


def test_skip_leaves_the_state_as_it_was_and_stops_after_n_in_a_row(tmp_path, four_good_steps):
    workdir = _copy(four_good_steps, tmp_path / "skip")
    step, message = _diverge(workdir, on_nonfinite="skip", max_nonfinite_steps=3, log_every=1,
                             checkpoint_every=1, keep_checkpoints=20)
    assert "3 steps in a row" in message, message
    first = int(re.search(r"steps (\d+) to (\d+)", message).group(1))
    assert step == first + 2 and first > 4
    saved = _checkpoints(workdir)
    # Skipping keeps the state finite, so every step was saved until the run gave up.
    assert sorted(saved) == [2, 4] + list(range(5, step))
    assert all(_all_finite(state) for state in saved.values())
    # The skipped steps advanced the counter and changed nothing else.
    for skipped in range(first, step):
        assert int(saved[skipped]["step"]) == skipped
        for name in ("params", "ema_params", "opt_state"):
            jax.tree_util.tree_map(np.testing.assert_array_equal, saved[skipped][name], saved[first - 1][name])
