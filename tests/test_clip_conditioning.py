"""CLIP-conditioned DDPM end to end: train on cached image embeddings, sample from text prompts."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from clip_fixtures import make_tiny_clip
from PIL import Image

from clip_ddpm.clip import embedding_cache as embeddings
from clip_ddpm.clip.encoder import CLIPEncoder
from clip_ddpm.ddpm import builders
from clip_ddpm.ddpm.config import Config
from clip_ddpm.ddpm.context_transform import build_context_transform
from clip_ddpm.ddpm.sample_contexts import contexts_for_request, encode_prompts
from clip_ddpm.ddpm.sampling import SampleRequest, generate_samples
from clip_ddpm.ddpm.trainer import train_and_evaluate
from clip_ddpm.errors import UserError
from clip_ddpm.training.datasets import load_split, same_examples_at_size
from clip_ddpm.training.workdir import RunInfo, read_run_info

PROJECTION_DIM = 20
PROMPTS = ("a red circle", "a small green triangle")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cond") / "clip"
    make_tiny_clip(directory, projection_dim=PROJECTION_DIM, seed=4)
    return directory


def _config(tmp_path, clip_dir, condition: str) -> Config:
    """The smallest run that still goes through every part (2 steps, DDIM with 2 steps)."""
    return Config(workdir=str(tmp_path / condition), dataset="shapes", dataset_size=16, image_size=16,
                  condition=condition, clip_model=str(clip_dir), clip_cache_dir=str(tmp_path / "cache"),
                  down_chs=(32, 32, 64), batch_size=8, num_steps=2, log_every=1, checkpoint_every=2,
                  warmup_steps=1, timesteps=20, sample_guidance=(1.0,), sample_columns=2, sampler="ddim",
                  sampling_steps=2)


def _manifests(root) -> dict[str, dict]:
    return {path.parent.name: json.loads(path.read_text()) for path in root.glob("clip_cache/*/*/manifest.json")}


def test_clip_image_run_builds_the_cache_trains_and_samples_from_prompts(tmp_path, clip_dir, monkeypatch):
    config = _config(tmp_path, clip_dir, "clip_image")
    result = train_and_evaluate(config)
    assert result.step == 2 and np.isfinite(result.metrics["loss"])

    manifest = _manifests(tmp_path / "cache")["image"]
    assert manifest["count"] == 16 and manifest["embedding_dim"] == PROJECTION_DIM
    assert manifest["finished_shards"] == [0] and manifest["clip_model"] == str(clip_dir)
    info = read_run_info(config.workdir)
    assert info.context_dim == PROJECTION_DIM  # width follows the CLIP
    assert info.clip_weights_hash == CLIPEncoder.from_pretrained(clip_dir).weights_hash == manifest["weights_hash"]

    # The trainer's contexts are the cached image embeddings; a second start reads them, not CLIP.
    dataset = load_split(config)
    monkeypatch.setattr(CLIPEncoder, "encode_images", lambda *a, **k: pytest.fail("cache not used"))
    source = builders.build_context_source(config, dataset)
    folder = next((tmp_path / "cache").glob("clip_cache/*/image"))
    assert source.dim == PROJECTION_DIM
    np.testing.assert_allclose(source.vectors, embeddings.load_embeddings(folder), rtol=0, atol=1e-6)
    monkeypatch.undo()
    np.testing.assert_allclose(source.vectors, CLIPEncoder.from_pretrained(clip_dir).encode_images(dataset.images),
                               rtol=0, atol=1e-5)

    # Prompts go through the same CLIP and the same normalisation as the training contexts.
    prompts = encode_prompts(config, list(PROMPTS))
    assert prompts.shape == (2, PROJECTION_DIM) and prompts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(prompts, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(prompts, CLIPEncoder.from_pretrained(clip_dir).encode_texts(list(PROMPTS)),
                               rtol=0, atol=1e-6)

    png = tmp_path / "prompted.png"
    out = generate_samples(SampleRequest(workdir=config.workdir, prompts=PROMPTS, guidance=(1.0,), sampler="ddim",
                                         sampling_steps=2, output=str(png), scale=1))
    assert out["columns"] == list(PROMPTS) and out["step"] == 2 and out["shape"][:2] == (1, 2)
    # One row of two 16-pixel images with the grid's 2-pixel padding.
    assert Image.open(png).size == (2 * (16 + 2) + 2, 16 + 2 + 2)
    with np.load(out["npz"]) as saved:
        assert saved["images"].shape == (1, 2, 16, 16, 3) and saved["images"].std() > 0


def test_clip_text_contexts_are_the_cached_caption_embeddings(tmp_path, clip_dir):
    config = _config(tmp_path, clip_dir, "clip_text")
    dataset = load_split(config)
    source = builders.build_context_source(config, dataset)
    manifest = _manifests(tmp_path / "cache")["text"]
    assert manifest["kind"] == "text" and manifest["count"] == 16 and manifest["dataset"] == dataset.name
    assert source.kind == "vectors" and source.vectors.shape == (16, PROJECTION_DIM)
    expected = CLIPEncoder.from_pretrained(clip_dir).encode_texts(list(dataset.captions))
    np.testing.assert_allclose(source.vectors, expected, rtol=0, atol=1e-5)
    # Captions that differ give different contexts: the conditioning carries the text.
    assert np.abs(source.vectors[0] - source.vectors[1]).max() > 1e-3


def test_prompt_of_another_width_is_refused(tmp_path, clip_dir):
    config = _config(tmp_path, clip_dir, "clip_image")
    request = SampleRequest(workdir=config.workdir, prompts=("a red circle",))
    info = RunInfo(context_dim=PROJECTION_DIM + 1, class_names=("x",), condition="clip_image")
    with pytest.raises(UserError, match="-wide contexts"):
        contexts_for_request(request, config, info)
    with pytest.raises(UserError, match="needs a CLIP-conditioned run"):
        contexts_for_request(request, config, dataclasses.replace(info, condition="class"))


def test_a_clip_replaced_after_training_is_refused_by_resume_and_by_prompts(tmp_path):
    clip_dir = tmp_path / "clip"
    make_tiny_clip(clip_dir, projection_dim=PROJECTION_DIM, seed=4)
    config = _config(tmp_path, clip_dir, "clip_image")
    train_and_evaluate(config)
    saved = {name: (tmp_path / "clip_image" / name).read_bytes() for name in ("flags.txt", "run_info.json")}

    # Same path, same width, other weights: a retrained CLIP whose space the U-Net never saw.
    make_tiny_clip(tmp_path / "retrained", projection_dim=PROJECTION_DIM, seed=5)
    shutil.copyfile(tmp_path / "retrained" / "model.safetensors", clip_dir / "model.safetensors")
    with pytest.raises(UserError, match="other weights"):
        train_and_evaluate(dataclasses.replace(config, num_steps=3))
    # Refused before encoding anything: the cache holds only the first CLIP's embeddings.
    assert len(list((tmp_path / "cache").glob("clip_cache/*"))) == 1
    with pytest.raises(UserError, match="other weights"):
        generate_samples(SampleRequest(workdir=config.workdir, prompts=PROMPTS, guidance=(1.0,)))
    assert saved == {name: (tmp_path / "clip_image" / name).read_bytes() for name in saved}


def test_clip_image_size_embeds_the_same_examples_at_the_clips_resolution(tmp_path, clip_dir):
    # A 16 px DDPM conditioned by a 32 px CLIP: the contexts are CLIP's embeddings of the same
    # training examples rendered at 32 px, not of the 16 px images resized by its preprocessing.
    config = dataclasses.replace(_config(tmp_path, clip_dir, "clip_image"), clip_image_size=32)
    dataset = load_split(config)
    sharp = load_split(dataclasses.replace(config, image_size=32))
    assert dataset.image_size == 16 and sharp.image_size == 32
    np.testing.assert_array_equal(sharp.labels, dataset.labels)
    source = builders.build_context_source(config, dataset)
    encoder = CLIPEncoder.from_pretrained(clip_dir)
    np.testing.assert_allclose(source.vectors, encoder.encode_images(sharp.images), rtol=0, atol=1e-5)
    resized = encoder.encode_images(dataset.images)
    assert np.max(np.abs(source.vectors - resized)) > 1e-2  # the two views really differ

    # The gap shift's image mean is taken over the same 32 px embeddings.
    shifted = dataclasses.replace(config, context_transform="gapshift")
    transform = build_context_transform(shifted, dataset, builders.build_context_source(shifted, dataset))
    np.testing.assert_allclose(transform.train_mean, np.mean(encoder.encode_images(sharp.images), axis=0),
                               rtol=0, atol=1e-5)


def test_examples_that_differ_between_sizes_are_refused(tmp_path, clip_dir):
    config = _config(tmp_path, clip_dir, "clip_image")
    dataset = load_split(config)
    reordered = dataclasses.replace(dataset, labels=dataset.labels[::-1].copy())
    with pytest.raises(UserError, match="does not list the same examples"):
        same_examples_at_size(config, reordered, 32)
    assert same_examples_at_size(config, dataset, 16) is dataset
    with pytest.raises(UserError, match="--clip_image_size must be 0"):
        dataclasses.replace(config, clip_image_size=4).validate()
