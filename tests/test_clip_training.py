"""Contrastive CLIP training: the loss against its closed form, a tiny run end to end (learning,
export read by transformers, resume), and the errors a user can cause.

One tiny model configuration is shared by every run here, so the train step and the two
evaluation programs are compiled once for the whole file.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from clip_ddpm.clip.train import trainer as clip_training
from clip_ddpm.clip.train.config import ClipTrainConfig
from clip_ddpm.clip.train.step import clip_optimizer, contrastive_loss
from clip_ddpm.ddpm.config import Config
from clip_ddpm.errors import UserError
from clip_ddpm.training.flags import read_flagfile
from clip_ddpm.training.metric_writer import MetricWriter
from clip_ddpm.training.train_state import OptimizerSettings
from clip_ddpm.training.workdir import write_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ce(logit_right: float, logit_wrong: float) -> float:
    """Two-way cross-entropy towards the first logit: log(1 + e^(wrong - right))."""
    return math.log1p(math.exp(logit_wrong - logit_right))


# ----------------------------------------------------------------------------- the loss

def test_contrastive_loss_2x2_equals_closed_form():
    # Unit images u0 = (1, 0), u1 = (0, 1); texts v0 = (1, 0), v1 = (0.6, 0.8), given at other
    # lengths to check the normalisation. Cosines S = [[1, 0.6], [0, 0.8]]; with scale 2 the
    # logits are [[2, 1.2], [0, 1.6]] (rows: images, columns: texts).
    image = jnp.array([[3.0, 0.0], [0.0, 0.5]])
    text = jnp.array([[2.0, 0.0], [1.2, 1.6]])
    loss, metrics = contrastive_loss(image, text, jnp.log(2.0))
    image_to_text = (_ce(2.0, 1.2) + _ce(1.6, 0.0)) / 2
    text_to_image = (_ce(2.0, 0.0) + _ce(1.6, 1.2)) / 2
    assert float(loss) == pytest.approx((image_to_text + text_to_image) / 2, rel=1e-6)
    assert float(metrics["temperature_scale"]) == pytest.approx(2.0)
    assert float(metrics["image_to_text_accuracy"]) == 1.0


def test_contrastive_loss_symmetric_case_and_wrong_pairs():
    # Texts equal to images: both directions see S = [[1, c], [c, 1]] and give log(1 + e^(-s(1-c))).
    c, s = 0.28, 5.0
    pair = jnp.array([[1.0, 0.0], [c, math.sqrt(1 - c * c)]])
    loss, _ = contrastive_loss(pair, pair, jnp.log(s))
    assert float(loss) == pytest.approx(_ce(s, s * c), rel=1e-5)
    # Swapping the captions makes every pair wrong: the loss is log(1 + e^(s(1-c))), and larger.
    swapped, metrics = contrastive_loss(pair, pair[::-1], jnp.log(s))
    assert float(swapped) == pytest.approx(_ce(s * c, s), rel=1e-5)
    assert float(metrics["image_to_text_accuracy"]) == 0.0


def test_temperature_parameter_is_clamped_after_each_update_and_can_come_back():
    """CLIP clamps the logit-scale parameter to [0, log 100] after each step. A cap inside the
    loss instead (exp(min(s, log 100))) has zero gradient above the cap: a parameter that got
    past it could never return. Here the loss has a gradient at any scale, and the real
    optimiser of the CLIP step puts the parameter back at the cap."""
    image = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    text = jnp.array([[1.0, 0.99], [0.99, 1.0]])  # cosines [[a, b], [b, a]], a - b = 0.0071
    a, b = 1.0 / math.hypot(1.0, 0.99), 0.99 / math.hypot(1.0, 0.99)
    loss, metrics = contrastive_loss(image, text, jnp.float32(math.log(100.0)))
    assert float(loss) == pytest.approx(_ce(100 * a, 100 * b), rel=1e-4)
    assert float(metrics["temperature_scale"]) == pytest.approx(100.0, rel=1e-5)
    grad = jax.grad(lambda t: contrastive_loss(image, text, t)[0])
    assert float(grad(jnp.float32(math.log(1000.0)))) < 0.0  # a gradient past the cap, too
    limit = math.log(100.0)
    optimizer = clip_optimizer(OptimizerSettings.create(0.05, 10, 0, weight_decay=0.1, grad_clip=1.0))

    def update(logit_scale: float, grad_scale: float) -> float:
        params = {"logit_scale": jnp.float32(logit_scale), "w": jnp.ones((2, 2))}
        grads = {"logit_scale": jnp.float32(grad_scale), "w": jnp.zeros((2, 2))}
        updates, _ = optimizer.update(grads, optimizer.init(params), params)
        return float(optax.apply_updates(params, updates)["logit_scale"])

    assert update(math.log(1000.0), 0.1) == pytest.approx(limit, abs=1e-6)  # above the cap: back to it
    assert update(limit, -0.1) == pytest.approx(limit, abs=1e-6)  # pushed up at the cap: stays there
    assert update(limit, 0.1) < limit - 0.01  # pushed down at the cap: comes back
    assert update(0.01, 0.1) == pytest.approx(0.0, abs=1e-6)  # never below 0 (a scale below 1)
    assert update(2.0, 0.1) == pytest.approx(2.0 - 0.05, abs=1e-3)  # in between: Adam's step alone


# ----------------------------------------------------------------------------- a tiny run

TINY = dict(dataset_size=512, eval_size=216, batch_size=64, num_steps=60, log_every=10, checkpoint_every=30,
            patch_size=8, vision_width=32, vision_layers=1, vision_heads=2, text_width=32, text_layers=1,
            text_heads=2, mlp_ratio=2, projection_dim=32, context_length=16, learning_rate=3e-3,
            warmup_steps=10, ema_decay=0.9, random_flip=True, random_shift=1, eval_batch_size=128)


def tiny_config(workdir, **overrides) -> ClipTrainConfig:
    return ClipTrainConfig(workdir=str(workdir), **{**TINY, **overrides})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("clip_run")
    result = clip_training.train_clip_and_evaluate(tiny_config(workdir))
    return workdir, result


def test_training_beats_chance_and_writes_its_evaluation(trained):
    workdir, result = trained
    assert result.step == TINY["num_steps"] and not result.preempted
    best = result.evaluation[result.exported_params]
    assert result.exported_params in ("ema", "raw")
    with open(workdir / "eval.json") as handle:
        saved = json.load(handle)
    assert saved["exported"] == result.exported_params and saved[result.exported_params] == best
    # Chance is 1/6 for colour and shape and 1/36 for the class; a model that has learnt
    # nothing scores about that, so twice chance on colour and class is a real signal.
    assert best["chance_colour"] == pytest.approx(1 / 6) and best["chance_class"] == pytest.approx(1 / 36)
    assert best["zero_shot_colour"] >= 2 / 6, best
    assert best["zero_shot_class"] >= 2 / 36, best
    assert best["recall@1_class"] > best["chance_recall@1_class"], best
    assert result.metrics["loss"] < math.log(TINY["batch_size"]), result.metrics  # below the untrained loss


def test_exported_parameters_are_chosen_on_validation_images_not_the_test_set(trained):
    """The EMA-or-raw choice is made on fresh renders of the training distribution; the test
    scores of both are reported, and played no part in it."""
    workdir, result = trained
    with open(workdir / "eval.json") as handle:
        saved = json.load(handle)
    assert saved["validation_set"].startswith("shapes-validation-") and saved["test_set"].startswith("shapes-test-")
    assert saved["validation"] == result.validation and set(saved["validation"]) == {"ema", "raw"}
    validation = {name: scores["zero_shot_class"] for name, scores in saved["validation"].items()}
    expected = "raw" if validation["raw"] > validation["ema"] else "ema"
    assert saved["exported"] == result.exported_params == expected
    assert saved["ema"] == result.evaluation["ema"] and saved["raw"] == result.evaluation["raw"]
    assert clip_training.choose_exported({"ema": {"zero_shot_class": 0.5}, "raw": {"zero_shot_class": 0.6}}) == "raw"
    assert clip_training.choose_exported({"ema": {"zero_shot_class": 0.5}, "raw": {"zero_shot_class": 0.5}}) == "ema"


def test_export_loads_in_transformers_with_the_same_embeddings(trained):
    import torch
    import transformers

    from clip_ddpm.clip.encoder import CLIPEncoder
    from clip_ddpm.data import shapes

    workdir, result = trained
    export = workdir / "clip"
    assert result.exported == str(export)
    model, info = transformers.CLIPModel.from_pretrained(str(export), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    processor = transformers.CLIPProcessor.from_pretrained(str(export))
    test = shapes.load("test", image_size=32, num_images=8)
    texts = list(test.captions) + list(shapes.class_prompts()[:4])
    inputs = processor(text=texts, images=list(test.images), return_tensors="pt", padding="max_length",
                       max_length=TINY["context_length"])
    with torch.no_grad():
        out = model.eval()(**inputs)
    # Our side, as the DDPM trainer reads the export (--clip_model=workdir/clip).
    encoder = CLIPEncoder.from_pretrained(export, batch_size=16)
    np.testing.assert_allclose(encoder.encode_images(test.images), out.image_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(encoder.encode_texts(texts), out.text_embeds.numpy(), atol=1e-5)
    assert model.logit_scale.item() <= math.log(100.0) + 1e-6


class _StopAt(MetricWriter):
    """A metric writer that sends this process SIGTERM after logging step STOP, as a
    preempting scheduler would."""

    STOP = 30

    def write(self, step, scalars):
        super().write(step, scalars)
        if step == self.STOP:
            os.kill(os.getpid(), signal.SIGTERM)


def test_resume_after_preemption_equals_the_uninterrupted_run(trained, tmp_path, monkeypatch):
    workdir, result = trained
    # The same vocabulary as the reference run (BPE training breaks ties arbitrarily).
    config = tiny_config(tmp_path / "run", tokenizer=str(workdir / "tokenizer"))
    with monkeypatch.context() as patch:
        patch.setattr(clip_training, "MetricWriter", _StopAt)
        stopped = clip_training.train_clip_and_evaluate(config)
    assert stopped.preempted and stopped.step == _StopAt.STOP and stopped.exported is None
    assert not (tmp_path / "run" / "clip").exists()
    resumed = clip_training.train_clip_and_evaluate(config)
    assert resumed.step == TINY["num_steps"]
    assert resumed.evaluation == result.evaluation
    from safetensors.numpy import load_file
    ours = load_file(str(tmp_path / "run" / "clip" / "model.safetensors"))
    reference = load_file(str(workdir / "clip" / "model.safetensors"))
    assert ours.keys() == reference.keys()
    for name in reference:
        np.testing.assert_array_equal(ours[name], reference[name], err_msg=name)


def test_resume_after_kill_9_equals_the_uninterrupted_run(trained, tmp_path):
    """A real process killed with SIGKILL mid-run (after its first checkpoint), then the same command
    again: it resumes from that checkpoint and exports exactly what the uninterrupted run did."""
    from trainer_process import finish, start

    workdir, result = trained
    flags = [f"--{k}" if v is True else f"--{k}={v}" for k, v in TINY.items()]
    flags += [f"--workdir={tmp_path / 'run'}", f"--tokenizer={workdir / 'tokenizer'}"]
    [(status, output)] = finish([start("clip_ddpm.train_clip", flags, ("--signal=45:KILL",))])
    assert status == -signal.SIGKILL, output[-3000:]
    assert not (tmp_path / "run" / "clip").exists()
    [(status, output)] = finish([start("clip_ddpm.train_clip", flags)])
    assert status == 0, output[-3000:]
    assert "resumed from the checkpoint of step 30" in output and "taking over the stale lock" in output
    from safetensors.numpy import load_file
    ours = load_file(str(tmp_path / "run" / "clip" / "model.safetensors"))
    reference = load_file(str(workdir / "clip" / "model.safetensors"))
    assert ours.keys() == reference.keys()
    for name in reference:
        np.testing.assert_array_equal(ours[name], reference[name], err_msg=name)


# ----------------------------------------------------------------------------- bad input

def test_bad_input_is_one_clear_error(tmp_path, trained):
    workdir, _ = trained
    with pytest.raises(UserError, match="--workdir is required"):
        clip_training.train_clip_and_evaluate(tiny_config(""))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot create --workdir"):
        clip_training.train_clip_and_evaluate(tiny_config(blocker / "run"))
    with pytest.raises(UserError, match="not divisible by the 4 devices"):
        clip_training.train_clip_and_evaluate(tiny_config(tmp_path / "odd", batch_size=6))
    # A different run in the workdir: other settings of ours, or another trainer's flags.
    with pytest.raises(UserError, match="holds a run with different settings.*weight_decay"):
        clip_training.train_clip_and_evaluate(tiny_config(workdir, weight_decay=0.3))
    ddpm_run = tmp_path / "ddpm"
    ddpm_run.mkdir()
    write_flags(Config(workdir=str(ddpm_run)))
    with pytest.raises(UserError, match="cannot read"):
        clip_training.train_clip_and_evaluate(tiny_config(ddpm_run))
    # An export directory that holds files is never overwritten by a fresh run ...
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "config.json").write_text("{}")
    with pytest.raises(UserError, match="already holds files"):
        clip_training.train_clip_and_evaluate(tiny_config(tmp_path / "new", export_dir=str(taken)))
    assert (taken / "config.json").read_text() == "{}"
    with pytest.raises(UserError, match="holds no tokenizer"):
        clip_training.train_clip_and_evaluate(tiny_config(tmp_path / "tok", tokenizer=str(tmp_path)))
    with pytest.raises(UserError, match="longest caption has 1[0-9] tokens"):
        clip_training.train_clip_and_evaluate(tiny_config(tmp_path / "short", context_length=8))
    # ... while resuming a finished run re-exports into its own directory (the fixture's run
    # already finished: nothing is trained again).
    again = clip_training.train_clip_and_evaluate(tiny_config(workdir))
    assert again.exported == str(workdir / "clip")


def test_command_line_reports_a_user_error_in_one_line(tmp_path):
    process = subprocess.run(
        [sys.executable, "-m", "clip_ddpm.train_clip", f"--workdir={tmp_path / 'run'}", "--batch_size=6"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert process.returncode == 2
    errors = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: --batch_size=6 is not divisible by the 4 devices; use a multiple of 4"]
    assert "Traceback" not in process.stderr


@pytest.mark.parametrize("name", ["shapes_clip_cpu.cfg", "shapes_clip_gpu.cfg"])
def test_experiment_configs_parse_and_validate(name):
    config = read_flagfile(os.path.join(REPO, "experiments", "configs", name), ClipTrainConfig)
    config.validate()
    assert config != ClipTrainConfig(workdir=config.workdir)  # the file really set something
    assert config.workdir.startswith("runs/") and config.dataset == "shapes"
    assert config.export_path == os.path.join(config.workdir, "clip")


@pytest.mark.parametrize("overrides, message", [
    ({"init_temperature": 0.001}, "--init_temperature must be in"),
    ({"init_temperature": 2.0}, "--init_temperature must be in"),
    ({"vision_width": 66, "vision_heads": 2}, "--vision_position_init=sincos needs --vision_width divisible by 4"),
])
def test_invalid_initialisation_flags_are_refused(overrides, message):
    with pytest.raises(UserError, match=message):
        ClipTrainConfig(workdir="run", **overrides).validate()


def test_initial_temperature_sets_the_starting_logit_scale():
    config = ClipTrainConfig(workdir="run", init_temperature=0.02)
    tokenizer = type("Tok", (), {"__len__": lambda self: 600, "bos_token_id": 0, "eos_token_id": 1,
                                 "pad_token_id": 1})()
    clip_config = clip_training.build_clip_config(config, tokenizer)
    assert clip_config.logit_scale_init_value == pytest.approx(np.log(50.0))
