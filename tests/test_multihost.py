"""Several hosts for real: two processes joined by jax.distributed (CPU collectives, a coordinator
on a free localhost port, two CPU devices each) train as one process with four devices does,
each reading only its own slice of the data, and stop together when one of them is preempted."""
from __future__ import annotations

import hashlib
import json
import os
import re

import jax
import numpy as np
from test_train_cli import SMOKE, smoke_config
from trainer_process import finish, free_port, start

from clip_ddpm.ddpm.trainer import train_and_evaluate
from clip_ddpm.training.checkpoints import Checkpoints

# The device-count test's tolerance (tests/test_parallel.py).
ATOL = 1e-5
# Two processes sum gradients in another order than one, so a gradient that is zero in exact
# arithmetic (a convolution bias before GroupNorm) comes out as different rounding noise of
# about 1e-9; Adam with its default epsilon (1e-8) turns that noise into a full step of either
# sign. With epsilon 1e-3 noise stays noise, and the runs must agree as the device-count test's do.
ADAM_EPS = 1e-3


def saved_state(workdir, step=None):
    """(step, state) of a checkpoint as host arrays, whatever the device layout it was saved from
    (four devices of one process, or two of each of two)."""
    import orbax.checkpoint as ocp

    checkpoints = Checkpoints(str(workdir), create=False)
    step = checkpoints.latest_step() if step is None else step
    checkpoints.close()
    path = os.path.join(workdir, "checkpoints", str(step), "default")
    checkpointer = ocp.StandardCheckpointer()
    metadata = checkpointer.metadata(path).item_metadata
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
    return step, jax.device_get(checkpointer.restore(path, abstract))


def assert_states_close(a, b, atol):
    flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
    flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
    assert len(flat_a) == len(flat_b) > 0
    for path, x in flat_a:
        np.testing.assert_allclose(x, flat_b[path], atol=atol, rtol=0, err_msg=jax.tree_util.keystr(path))


def shapes_digests(image_size: int, num_images: int) -> list[str]:
    from clip_ddpm.data import shapes

    whole = shapes.load("train", image_size=image_size, num_images=num_images)
    return [hashlib.sha1(image.tobytes()).hexdigest() for image in whole.images]


def assert_slices_cover(slice_files, whole: list[str]) -> None:
    """The images each process loaded: as many each, none shared, all of them in order."""
    read = [json.loads(path.read_text()) for path in slice_files]
    assert len(read[0]) == len(read[1]) == len(whole) // 2
    assert not set(read[0]) & set(read[1])
    assert read[0] + read[1] == whole


def two_process_job(module, flags, options=((), ())):
    """Starts both processes of a job, waits for them and returns [(status, output)] * 2."""
    job = flags + ["--distributed", "--num_processes=2", f"--coordinator_address=localhost:{free_port()}"]
    processes = [start(module, job + [f"--process_id={i}"], options[i], devices=2) for i in range(2)]
    return finish(processes, timeout=400)


def test_two_processes_train_as_one_and_stop_together_on_sigterm(tmp_path):
    workdir = tmp_path / "run"
    flags = [f"--flagfile={SMOKE}", f"--workdir={workdir}", "--num_steps=10", "--sample_every=1",
             f"--adam_eps={ADAM_EPS}"]
    slices = [tmp_path / f"slice{i}.json" for i in range(2)]
    # Process 1 (not the chief) is preempted after its fourth step.
    first = two_process_job("clip_ddpm.train", flags, [(f"--record_slice={slices[0]}",),
                                                       (f"--record_slice={slices[1]}", "--signal=4:TERM")])
    for status, output in first:
        assert status == 0, output[-3000:]
    stops = [re.findall(r"every process stops at step (\d+)", output) for _, output in first]
    assert stops[0] == stops[1] and len(stops[0]) == 1, stops
    stop = int(stops[0][0])
    assert 4 <= stop < 10  # JAX picks the step after the furthest any process had reported
    assert max(int(s) for s in os.listdir(workdir / "checkpoints")) == stop
    # A grid was due at every step; the one at the preempted step was skipped, not the one before.
    assert (workdir / "samples" / f"step_{stop - 1:07d}.png").is_file()
    assert not (workdir / "samples" / f"step_{stop:07d}.png").exists()

    # Each process rendered only its slice: disjoint, and together the whole training set.
    assert_slices_cover(slices, shapes_digests(16, 256))

    second = two_process_job("clip_ddpm.train", flags)
    for status, output in second:
        assert status == 0, output[-3000:]
        assert f"resumed from the checkpoint of step {stop}" in output
    reference = train_and_evaluate(smoke_config(tmp_path / "one_process", num_steps=10, adam_eps=ADAM_EPS))
    assert reference.step == 10
    step_two, two = saved_state(workdir)
    step_one, one = saved_state(tmp_path / "one_process")
    assert step_two == step_one == 10
    assert_states_close(two, one, ATOL)


def test_two_processes_train_clip_as_one(tmp_path):
    from test_clip_training import TINY, tiny_config

    from clip_ddpm.clip.train.trainer import train_clip_and_evaluate

    settings = {**TINY, "num_steps": 6, "log_every": 2, "checkpoint_every": 3, "eval_size": 36,
                "adam_eps": ADAM_EPS}
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
