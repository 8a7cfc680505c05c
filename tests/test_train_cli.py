"""End to end through the functions the CLIs call: train, resume, sample, and bad input."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from clip_ddpm.ddpm.config import Config
from clip_ddpm.ddpm.sampling import SampleRequest, generate_samples
from clip_ddpm.ddpm.trainer import train_and_evaluate
from clip_ddpm.errors import UserError
from clip_ddpm.training.checkpoints import Checkpoints
from clip_ddpm.training.flags import read_flagfile
from clip_ddpm.training.train_state import OptimizerSettings, learning_rate_at
from clip_ddpm.training.workdir import RunInfo, write_atomically, write_run_info

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "experiments", "configs", "smoke.cfg")


def smoke_config(workdir, **overrides) -> Config:
    config = read_flagfile(SMOKE, Config)
    return dataclasses.replace(config, workdir=str(workdir), **overrides)


def _saved_params(workdir):
    checkpoints = Checkpoints(str(workdir), create=False)
    step = checkpoints.latest_step()
    restored = checkpoints._manager.restore(step)
    checkpoints.close()
    return step, restored


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The smoke config trained once (6 steps, 4 devices), shared by the tests below."""
    workdir = tmp_path_factory.mktemp("smoke")
    result = train_and_evaluate(smoke_config(workdir))
    return workdir, result


def test_smoke_config_trains_end_to_end(smoke_run):
    workdir, result = smoke_run
    assert result.step == 6 and np.isfinite(result.metrics["loss"])
    assert os.path.isfile(workdir / "flags.txt") and os.path.isfile(workdir / "metrics.jsonl")
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
    grid = Image.open(workdir / "samples" / "step_0000006.png")
    # 2 guidance rows x 4 columns of 16px images, 2px padding, scaled 2x.
    assert grid.size == (2 * (4 * 18 + 2), 2 * (2 * 18 + 2))
    saved = read_flagfile(str(workdir / "flags.txt"), Config)
    assert saved == smoke_config(workdir, lr_decay_steps=6)  # the schedule's length, fixed at the first start


def test_resume_gives_the_params_of_an_uninterrupted_run(tmp_path):
    from trainer_process import STEADY, steady_reference

    interrupted = tmp_path / "interrupted"
    first = train_and_evaluate(smoke_config(interrupted, **STEADY, checkpoint_every=100), stop_at=4)
    assert first.preempted and first.step == 4
    assert sorted(os.listdir(interrupted / "checkpoints")) == ["4"]
    train_and_evaluate(smoke_config(interrupted, **STEADY, checkpoint_every=100))
    step_a, a = _saved_params(interrupted)
    step_b, b = _saved_params(steady_reference())  # the same run, never stopped
    assert step_a == step_b == STEADY["num_steps"]
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(x, y)


def _learning_rates(workdir) -> dict[int, float]:
    with open(workdir / "metrics.jsonl") as handle:
        rows = [json.loads(line) for line in handle]
    return {row["step"]: row["learning_rate"] for row in rows}


def test_extending_a_finished_run_goes_on_at_the_final_learning_rate(tmp_path):
    """A 6-step run decays the rate to 1% of its peak; resumed with --num_steps=9 it keeps the
    6-step schedule (recorded in flags.txt) instead of jumping back up a 9-step one."""
    peak = 1e-3
    extended = tmp_path / "extended"
    common = dict(warmup_steps=2, log_every=1, learning_rate=peak, checkpoint_every=100)
    train_and_evaluate(smoke_config(extended, num_steps=6, **common))
    train_and_evaluate(smoke_config(extended, num_steps=9, **common))
    assert read_flagfile(str(extended / "flags.txt"), Config).lr_decay_steps == 6
    rates = _learning_rates(extended)  # the row of step s holds the rate of update s (state.step s - 1)
    assert rates[3] == pytest.approx(peak)  # the end of the warm-up
    for step in (7, 8, 9):
        assert rates[step] == pytest.approx(0.01 * peak)
    # A schedule rebuilt for 9 steps (as resuming did before) would be back far above the floor.
    nine_step_schedule = OptimizerSettings.create(peak, 9, common["warmup_steps"], 0.0, 1.0)
    assert float(learning_rate_at(nine_step_schedule, 6)) > 0.3 * peak
    # Asking for another schedule length on resume is a different run.
    with pytest.raises(UserError, match="lr_decay_steps: saved 6, requested 12"):
        train_and_evaluate(smoke_config(extended, num_steps=12, lr_decay_steps=12, **common))


def test_run_info_is_replaced_atomically(smoke_run):
    """A write that fails half-way leaves the previous run_info.json whole, and no stray file."""
    workdir, _ = smoke_run
    before = (workdir / "run_info.json").read_text()
    broken = RunInfo(context_dim=36, class_names=("red circle", object()), condition="class")
    with pytest.raises(TypeError):
        write_run_info(str(workdir), broken)
    assert (workdir / "run_info.json").read_text() == before
    # Text that fails while it is being written (a lone surrogate has no UTF-8 form).
    with pytest.raises(UnicodeEncodeError):
        write_atomically(str(workdir / "run_info.json"), '{"context_dim": 36, "class_names": ["\ud800"]}')
    assert (workdir / "run_info.json").read_text() == before
    assert not (workdir / "run_info.json.tmp").exists()


def test_sample_reads_only_the_ema_parameters(smoke_run, tmp_path):
    """Sampling restores the EMA parameters alone, equal to those saved; so a checkpoint stays
    sampleable when the optimiser that trained it can no longer be rebuilt the same way (here
    flags.txt is edited to a run without gradient clipping, whose Adam state has another
    structure), and it never holds Adam's moments in memory."""
    workdir, _ = smoke_run
    step, saved = _saved_params(workdir)
    checkpoints = Checkpoints(str(workdir), create=False)
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), saved["ema_params"])
    part = checkpoints.restore_part({"ema_params": abstract}, step)
    checkpoints.close()
    assert list(part) == ["ema_params"]
    for a, b in zip(jax.tree_util.tree_leaves(part["ema_params"]), jax.tree_util.tree_leaves(saved["ema_params"])):
        np.testing.assert_array_equal(a, b)
    edited = tmp_path / "edited"
    shutil.copytree(workdir, edited)
    flags_text = (edited / "flags.txt").read_text()
    assert "--grad_clip=1.0" in flags_text
    (edited / "flags.txt").write_text(flags_text.replace("--grad_clip=1.0", "--grad_clip=0.0"))
    result = generate_samples(SampleRequest(workdir=str(edited), class_labels=("0",), guidance=(1.0,),
                                            sampler="ddim", sampling_steps=2))
    assert result["step"] == step


def test_clip_denoised_reaches_the_grid_samplers(tmp_path, monkeypatch):
    """--clip_denoised is recorded in flags.txt and given to the training grids' sampler and to
    clip_ddpm.sample's."""
    from clip_ddpm.ddpm import sampling, trainer
    from clip_ddpm.diffusion import grid

    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("clip_denoised", args[6] if len(args) > 6 else False))
        return grid.make_sampler(*args, **kwargs)

    monkeypatch.setattr(trainer, "make_sampler", spy)
    monkeypatch.setattr(sampling, "make_sampler", spy)
    workdir = tmp_path / "run"
    # Stopped after one step: the trainer builds its grid sampler before the loop, and the train
    # step is the smoke run's (compiled once for the session).
    train_and_evaluate(smoke_config(workdir, clip_denoised=True), stop_at=1)
    assert read_flagfile(str(workdir / "flags.txt"), Config).clip_denoised is True
    generate_samples(SampleRequest(workdir=str(workdir), class_labels=("0",), guidance=(0.0,), sampler="ddim",
                                   sampling_steps=2))
    assert seen == [True, True]
    assert Config(workdir="w").clip_denoised is False  # off unless asked for, as in the course


def test_sample_from_checkpoint_writes_png_and_npz_of_the_right_size(smoke_run, tmp_path):
    workdir, _ = smoke_run
    out = tmp_path / "grid.png"
    result = generate_samples(SampleRequest(
        workdir=str(workdir), class_labels=("0", "red square"), guidance=(0.0, 1.0, 3.0),
        sampler="ddim", sampling_steps=4, num_samples=2, output=str(out), scale=1))
    assert result["step"] == 6 and result["columns"] == ["red circle", "red square"]
    assert Image.open(out).size == (4 * 18 + 2, 3 * 18 + 2)  # 3 rows x (2 classes x 2 samples)
    images = np.load(tmp_path / "grid.npz")["images"]
    assert images.shape == (3, 4, 16, 16, 3) and images.dtype == np.uint8
    with pytest.raises(UserError, match="exists"):  # never overwritten silently
        generate_samples(SampleRequest(workdir=str(workdir), output=str(out), sampler="ddim", sampling_steps=2))


def test_sample_rejects_bad_requests(smoke_run, tmp_path):
    workdir, _ = smoke_run
    with pytest.raises(UserError, match="no checkpoints"):
        empty = tmp_path / "empty"
        empty.mkdir()
        (empty / "flags.txt").write_text((workdir / "flags.txt").read_text())
        (empty / "run_info.json").write_text((workdir / "run_info.json").read_text())
        generate_samples(SampleRequest(workdir=str(empty)))
    with pytest.raises(UserError, match="not a class"):
        generate_samples(SampleRequest(workdir=str(workdir), class_labels=("magenta blob",)))
    wrong_width = tmp_path / "ctx.npy"
    np.save(wrong_width, np.zeros((2, 5), np.float32))
    with pytest.raises(UserError, match=r"this run needs \[N, 36\]"):
        generate_samples(SampleRequest(workdir=str(workdir), context_file=str(wrong_width)))
    with pytest.raises(UserError, match="CLIP-conditioned"):
        generate_samples(SampleRequest(workdir=str(workdir), prompts=("a red circle",)))
    with pytest.raises(UserError, match="no checkpoint at step 5"):
        generate_samples(SampleRequest(workdir=str(workdir), step=5))


@pytest.mark.parametrize("overrides,message", [
    ({"image_size": 18}, "multiple of 4"),
    ({"batch_size": 6}, "not divisible by the 4 devices"),
    ({"condition": "embedding"}, "needs --context_file"),
    ({"down_chs": (32, 48, 64)}, "multiples of 32"),
])
def test_bad_settings_are_clear_errors(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        train_and_evaluate(smoke_config(tmp_path / "run", **overrides))


def test_context_file_must_match_the_dataset(tmp_path):
    short = tmp_path / "short.npy"
    np.save(short, np.zeros((10, 8), np.float32))
    with pytest.raises(UserError, match="has 10 rows but the dataset has 256"):
        train_and_evaluate(smoke_config(tmp_path / "run", condition="embedding", context_file=str(short)))
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros((256,), np.float32))
    with pytest.raises(UserError, match="must be 2-D"):
        train_and_evaluate(smoke_config(tmp_path / "run", condition="embedding", context_file=str(flat)))


def test_unwritable_workdir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(UserError, match="not a directory"):
        train_and_evaluate(smoke_config(blocker))
    with pytest.raises(UserError, match="cannot create --workdir"):
        train_and_evaluate(smoke_config(blocker / "run"))


def test_failed_start_overwrites_nothing(smoke_run):
    workdir, _ = smoke_run
    before = {name: (workdir / name).read_bytes() for name in ("flags.txt", "run_info.json", "metrics.jsonl")}
    steps_before = sorted(os.listdir(workdir / "checkpoints"))
    with pytest.raises(UserError, match="holds a run with different settings"):
        train_and_evaluate(smoke_config(workdir, weight_decay=0.5))
    # Another image size or model width than the run being resumed.
    with pytest.raises(UserError, match=r"different settings \(--image_size: saved 16, requested 24\)"):
        train_and_evaluate(smoke_config(workdir, image_size=24))
    with pytest.raises(UserError, match=r"different settings \(--down_chs: saved \(32, 32, 64\), requested"):
        train_and_evaluate(smoke_config(workdir, down_chs=(64, 64, 128)))
    with pytest.raises(UserError, match="context_file"):
        train_and_evaluate(smoke_config(workdir, condition="embedding", context_file="/nonexistent.npy"))
    after = {name: (workdir / name).read_bytes() for name in before}
    assert after == before and sorted(os.listdir(workdir / "checkpoints")) == steps_before


def _cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True)


def test_cli_bad_input_gives_one_error_line_and_nonzero_exit(tmp_path):
    missing = _cli("clip_ddpm.train", f"--flagfile={tmp_path / 'missing.cfg'}")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert missing.stderr.startswith("error: Unable to open flagfile")
    bad_enum = _cli("clip_ddpm.train", f"--flagfile={SMOKE}", "--condition=bogus")
    assert bad_enum.returncode == 2 and len(bad_enum.stderr.strip().splitlines()) == 1
    assert bad_enum.stderr.startswith("error: flag --condition=bogus")
    no_ckpt = _cli("clip_ddpm.sample", f"--workdir={tmp_path}")
    assert no_ckpt.returncode == 2
    assert no_ckpt.stderr.strip().splitlines() == [f"error: no flag file at {tmp_path}/flags.txt"]
