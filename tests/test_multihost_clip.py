"""Two processes joined by jax.distributed train the CLIP as one process with four devices does,
each reading only its own slice of the captioned images (the DDPM's case: test_multihost.py)."""
from __future__ import annotations

from test_multihost import (ATOL, OPTIMIZER, assert_slices_cover, assert_states_close, saved_state, shapes_digests,
                            two_process_job)


def test_two_processes_train_clip_as_one(tmp_path):
    from test_clip_training import TINY, tiny_config

    from clip_ddpm.clip.train.trainer import train_clip_and_evaluate

    settings = {**TINY, "num_steps": 6, "log_every": 2, "checkpoint_every": 3, "eval_size": 36, **OPTIMIZER}
    workdir = tmp_path / "run"
    flags = [f"--{k}" if v is True else f"--{k}={v}" for k, v in settings.items()] + [f"--workdir={workdir}"]
    slices = [tmp_path / f"slice{i}.json" for i in range(2)]
    for status, output in two_process_job("clip_ddpm.train_clip", flags, [(f"--record_slice={path}",)
                                                                          for path in slices]):
        assert status == 0, output[-3000:]
    assert_slices_cover(slices, shapes_digests(32, settings["dataset_size"]))
    # Process 0 trained the tokenizer on every process's captions and exported the model.
    assert (workdir / "clip" / "model.safetensors").is_file() and (workdir / "eval.json").is_file()
    reference = tmp_path / "one_process"
    train_clip_and_evaluate(tiny_config(reference, **{**settings, "tokenizer": str(workdir / "tokenizer")}))
    step_two, two = saved_state(workdir)
    step_one, one = saved_state(reference)
    assert step_two == step_one == 6
    assert_states_close(two, one, ATOL)
