"""The GPU study config as written (two CLIPs trained here, held-out pairs, LAFITE and element-wise
dropout) runs end to end on the CPU at tiny sizes, so it cannot rot."""
from __future__ import annotations

import os

from study_setup import GPU_CONFIG, TINY_DDPM, parse

from clip_ddpm.ddpm.config import Config
from clip_ddpm.training.flags import read_flagfile
from experiments.study.runner import run_study
from experiments.study.variants import run_dir


def test_gpu_config_runs_on_cpu_at_tiny_sizes(tmp_path):
    # The GPU study as configured (two CLIPs trained here, held-out pairs, LAFITE and element-wise
    # dropout), at tiny sizes; the variants every other test covers are left out to save time.
    workdir = tmp_path / "study"
    setup = parse(f"--flagfile={GPU_CONFIG}", *TINY_DDPM, f"--workdir={workdir}",
                  "--variants=image_noise@0.5,image_elementwise", "--oracle_steps=2", "--oracle_images=64",
                  "--oracle_widths=8,8,8", "--oracle_feature_dim=8", "--real_test_images=72",
                  "--clip_image_size=16", "--clip_dataset_size=64", "--clip_eval_size=36", "--clip_num_steps=2",
                  "--clip_batch_size=16", "--clip_patch_size=8", "--clip_vision_width=32", "--clip_vision_layers=1",
                  "--clip_vision_heads=2", "--clip_text_width=32", "--clip_text_layers=1", "--clip_text_heads=2",
                  "--clip_projection_dim=16", "--clip_warmup_steps=1", "--clip_log_every=1",
                  "--clip_checkpoint_every=2", "--clip_eval_batch_size=64", "--clip_dtype=float32")
    results = run_study(setup)
    assert results["scorer_clip"]["source"] == "trained here" and results["holdout_classes"]
    report = (workdir / "report.md").read_text()
    assert "all right, unseen pairs" in report and "CLIP score (independent CLIP)" in report
    assert set(results["test"]) == {"image_noise@0.5", "image_elementwise"}
    flags_txt = read_flagfile(os.path.join(run_dir(str(workdir), "image_noise@0.5", 0), "flags.txt"), Config)
    assert (flags_txt.context_transform, flags_txt.lafite_xi) == ("lafite", 0.5)
