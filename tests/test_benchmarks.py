"""The GPU benchmark runs every figure end to end on the CPU (--smoke), with a stand-in for the
PyTorch peer script (tests/unet_peer_stub.py), and never imports TensorFlow."""
import json
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_benchmark_smoke_measures_every_figure_without_tensorflow(tmp_path):
    peers = tmp_path / "peers"
    peers.mkdir()
    shutil.copy(os.path.join(REPO, "tests", "unet_peer_stub.py"), peers / "torch_unet_peer.py")
    shutil.copy(os.path.join(REPO, "tests", "test_unet_course.py"), peers / "test_unet_course.py")
    table = tmp_path / "table.md"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    env.pop("XLA_FLAGS", None)  # one CPU device, as on a GPU machine's host, and XLA's default optimisation
    done = subprocess.run([sys.executable, "benchmarks/gpu.py", "--smoke", f"--peer_dir={peers}",
                           f"--markdown={table}"], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    figures = {row["figure"] for row in rows}
    assert len(figures) == 5, figures  # 1 train batch, DDPM and DDIM sampling, CLIP image and text
    # torch.compile is exercised beside the train step only in a smoke run.
    expected = {(f, side) for f in figures for side in ("ours", "eager_fp32")}
    expected |= {(f, "compile_fp32") for f in figures if f.startswith("train step")}
    assert expected == {(row["figure"], row["side"]) for row in rows}
    for row in rows:
        assert row["per_s"] > 0 and row["seconds"] > 0 and row["first_s"] > 0, row
        assert row["tensorflow_loaded"] is False, row
        if row["side"] == "ours":
            assert row["flops"] > 0, row
    text = table.read_text()
    assert text.count("\n| ") == 6 and "failed" not in text  # header and five figures


def test_a_gpu_figure_is_counted_on_the_cpu_lowering_of_the_same_program():
    """A GPU's cost analysis leaves out cuDNN's work, so GPU figures are counted in a CPU process:
    that count must be the one this (CPU) process makes of the same train step and sampler."""
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        import workloads
    finally:
        sys.path.remove(os.path.join(REPO, "benchmarks"))
    unet = {"down": [32, 32, 64], "image_size": 8, "context_dim": 8, "dtype": "bfloat16", "device": "cuda"}
    jobs = [{**unet, "kind": "train", "batch": 4},
            {**unet, "kind": "ddim", "steps": 3, "num_images": 2, "timesteps": [19, 9, 0]}]
    for job in jobs:
        build = workloads.train_step if job["kind"] == "train" else workloads.sampler
        here = build(job)[1]()
        assert here > 0
        assert workloads.counted_on_cpu(job, timeout=300) == here, job
