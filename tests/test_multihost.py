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
import pytest
from trainer_process import STEADY, finish, free_port, start, steady_flags, steady_reference

from clip_ddpm.training.checkpoints import Checkpoints

# The device-count test's tolerance (tests/test_parallel.py).
ATOL = 1e-5
# Two processes sum gradients in another order than one, so a gradient that is zero in exact
# arithmetic (a convolution bias before GroupNorm) comes out as different rounding noise of
# about 1e-9; Adam with its default epsilon (1e-8) turns that noise into a full step of either
# sign (measured: 5e-4 apart after 10 steps). With epsilon 1e-3 noise stays noise, and with a
# learning rate of 1e-4 ten steps do not amplify rounding differences past the device-count
# test's tolerance (measured: 1.5e-5 apart at the default 1e-3, at the end of its warm-up).
OPTIMIZER = {"adam_eps": STEADY["adam_eps"], "learning_rate": STEADY["learning_rate"]}


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
    flags = steady_flags(workdir, "--sample_every=2")
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
    # Both processes drew the grid of step 2 together; one due at the preempted step is skipped.
    assert (workdir / "samples" / "step_0000002.png").is_file()
    assert not (workdir / "samples" / f"step_{stop:07d}.png").exists()

    # Each process rendered only its slice: disjoint, and together the whole training set.
    assert_slices_cover(slices, shapes_digests(16, 256))

    second = two_process_job("clip_ddpm.train", flags)
    for status, output in second:
        assert status == 0, output[-3000:]
        assert f"resumed from the checkpoint of step {stop}" in output
    step_two, two = saved_state(workdir)
    step_one, one = saved_state(steady_reference())
    assert step_two == step_one == 10
    assert_states_close(two, one, ATOL)


def test_grid_contexts_are_the_same_on_every_process(monkeypatch):
    """Each process holds a slice of the dataset; the grid's columns (the first image of each
    class in the whole dataset) must come out the same everywhere. Two processes are simulated
    here by answering each one's gathers with both slices' values."""
    from clip_ddpm.data import shapes
    from clip_ddpm.ddpm import contexts as context_lib

    whole = shapes.load("train", image_size=16, num_images=60)
    vectors = np.random.default_rng(0).standard_normal((60, 5)).astype(np.float32)
    halves = [shapes.load("train", image_size=16, num_images=60, process_index=i, process_count=2) for i in range(2)]
    sources = [context_lib.ContextSource("vectors", 5, vectors=vectors[30 * i:30 * (i + 1)]) for i in range(2)]

    def calls_of(process):  # what one process contributes to each gather, in order
        seen = []
        monkeypatch.setattr(context_lib, "gather_from_processes", lambda value: seen.append(value) or value[None])
        sources[process].grid_contexts(halves[process], columns=8)
        return seen

    contributions = [calls_of(0), calls_of(1)]
    picked = []
    for process in range(2):
        answers = iter(np.stack(pair) for pair in zip(*contributions))
        monkeypatch.setattr(context_lib, "gather_from_processes", lambda value: next(answers))
        monkeypatch.setattr(context_lib.jax, "process_index", lambda: process)
        picked.append(sources[process].grid_contexts(halves[process], columns=8)[0])
    monkeypatch.undo()
    expected, _ = context_lib.ContextSource("vectors", 5, vectors=vectors).grid_contexts(whole, columns=8)
    np.testing.assert_array_equal(picked[0], picked[1])
    np.testing.assert_array_equal(picked[0], expected)
    assert len(expected) == 8


def test_a_caption_too_long_on_one_host_stops_both(tmp_path):
    """Only process 1's slice holds the over-long caption: the check is decided over both slices,
    so both stop with the same error instead of one waiting for the other forever."""
    from PIL import Image

    root = tmp_path / "pictures"
    rows = ["file,caption"]
    for name, colour in (("red", (200, 20, 20)), ("blue", (20, 20, 200))):
        (root / name).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (12, 12), colour).save(root / name / f"{i}.png")
            rows.append(f"{name}/{i}.png,a {name} square")
    # red/6.png is in the training split (every 4th file of a class is held out) and in process 1's half.
    rows[rows.index("red/6.png,a red square")] = "red/6.png," + " ".join(["a very long caption"] * 10)
    (root / "captions.csv").write_text("\n".join(rows) + "\n")
    flags = [f"--workdir={tmp_path / 'run'}", f"--dataset=folder:{root}", "--test_fraction=0.25", "--image_size=8",
             "--patch_size=4", "--batch_size=4", "--context_length=12", "--vision_width=32", "--text_width=32"]
    results = two_process_job("clip_ddpm.train_clip", flags)
    errors = [[line for line in output.splitlines() if line.startswith("error:")] for _, output in results]
    assert [status for status, _ in results] == [2, 2], [output[-2000:] for _, output in results]
    assert errors[0] == errors[1] and len(errors[0]) == 1, errors
    assert "the longest caption has" in errors[0][0] and "--context_length=12" in errors[0][0]


def test_uneven_slices_are_cut_to_a_common_multiple_of_the_local_devices(monkeypatch):
    """Slices of 131 and 130 images on hosts of 4 devices each: a global array sharded along 'data'
    needs as many rows from each host, a multiple of 4, so both keep 128 (simulated hosts)."""
    from clip_ddpm.errors import UserError
    from clip_ddpm.training import parallel

    monkeypatch.setattr(parallel.jax, "process_count", lambda: 2)
    monkeypatch.setattr(parallel, "gather_from_processes", lambda value: np.array([131, 130]))
    assert jax.local_device_count() == 4
    assert parallel.rows_per_process(131) == parallel.rows_per_process(130) == 128
    parallel.check_dataset_fits_batch(131, 256)
    with pytest.raises(UserError, match=r"--batch_size=264 is larger than the dataset \(256 images\)"):
        parallel.check_dataset_fits_batch(131, 264)
