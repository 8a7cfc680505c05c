"""The flowers study config runs on mock tf_flowers, judged by zero-shot classification with an
independent CLIP, so it cannot rot."""
from __future__ import annotations

from clip_fixtures import make_tiny_clip
from study_setup import FLOWERS_CONFIG, TINY_DDPM, parse, study_clip_dir  # noqa: F401  (a fixture)

from experiments.study.runner import run_study


def test_flowers_config_runs_on_mock_tf_flowers_with_a_zero_shot_judge(tmp_path, study_clip_dir):
    import tensorflow_datasets as tfds

    scorer = tmp_path / "scorer"
    make_tiny_clip(scorer, projection_dim=24, seed=7, vision={"image_size": 16})
    workdir = tmp_path / "study"
    setup = parse(f"--flagfile={FLOWERS_CONFIG}", *TINY_DDPM, f"--workdir={workdir}", "--variants=image,class",
                  f"--clip_model={study_clip_dir}", f"--scorer_clip_model={scorer}", "--real_test_images=16",
                  "--ddpm_random_flip=false")
    with tfds.testing.mock_data(num_examples=16):
        results = run_study(setup)
    assert results["judge"]["name"].startswith("zero-shot independent CLIP")
    assert results["judge"]["attributes"] == ["class"] and results["config"]["num_classes"] == 5
    assert set(results["test"]) == {"image", "class"}  # class: one-hot labels, sampled from labels
    assert "independent CLIP image embeddings" in (workdir / "report.md").read_text()
