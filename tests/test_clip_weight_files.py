"""Reading CLIP checkpoints as they are published: half-precision weights, sharded indexes, hub
ids and local paths; anything unusable is one clear error, never a traceback or a download."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from clip_fixtures import make_tiny_clip

from clip_ddpm.clip import weights as clip_weights
from clip_ddpm.clip.weights import CLIPLoadError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("weights") / "clip"
    model = make_tiny_clip(directory, seed=3)
    return directory, model


def _copy_without_weights(source, target):
    target.mkdir()
    for path in source.iterdir():
        if path.is_file() and path.suffix != ".safetensors":
            (target / path.name).write_bytes(path.read_bytes())
    return target


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_load_as_float32(tiny, tmp_path, dtype):
    directory, model = tiny
    half_model = copy.deepcopy(model).to(dtype)
    half = tmp_path / "half"
    half_model.save_pretrained(str(half), safe_serialization=True)
    config, params, _ = clip_weights.load_clip(half)
    # The reference: transformers' own half-precision tensors, widened by torch.
    widened = {k: v.float().numpy() for k, v in half_model.state_dict().items()}
    expected = clip_weights.hf_to_flax(widened, config)
    ours, ref = clip_weights.flax_to_hf(params), clip_weights.flax_to_hf(expected)
    for name in ref:
        assert ours[name].dtype == np.float32
        np.testing.assert_array_equal(ours[name], ref[name], err_msg=name)
    full = clip_weights.flax_to_hf(clip_weights.load_clip(directory)[1])
    assert any(not np.array_equal(full[name], ours[name]) for name in ours)  # really rounded


def test_sharded_checkpoint_and_bad_indexes(tiny, tmp_path):
    directory, model = tiny
    sharded = tmp_path / "sharded"
    model.save_pretrained(str(sharded), safe_serialization=True, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file() and not (sharded / "model.safetensors").exists()
    np.testing.assert_equal(clip_weights.load_clip(sharded)[1], clip_weights.load_clip(directory)[1])

    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    cases = {"no_map": {"metadata": {}}, "parent": {"weight_map": {"x": "../model.safetensors"}},
             "absolute": {"weight_map": {"x": str(directory / "model.safetensors")}}}
    messages = {"no_map": "has no \"weight_map\"", "parent": "outside the checkpoint directory",
                "absolute": "outside the checkpoint directory"}
    for name, content in cases.items():
        broken = _copy_without_weights(directory, tmp_path / name)
        (broken / "model.safetensors.index.json").write_text(json.dumps(content))
        with pytest.raises(CLIPLoadError, match=messages[name]):
            clip_weights.load_clip(broken)
    assert index["weight_map"]


def test_directory_without_weights_and_truncated_weights(tiny, tmp_path):
    directory, _ = tiny
    empty = _copy_without_weights(directory, tmp_path / "no_weights")
    with pytest.raises(CLIPLoadError, match="has no model.safetensors"):
        clip_weights.load_clip(empty)
    data = (directory / "model.safetensors").read_bytes()
    (empty / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CLIPLoadError, match="truncated"):
        clip_weights.load_clip(empty)


def test_a_missing_local_path_is_an_error_not_a_hub_download(tmp_path, monkeypatch):
    import huggingface_hub

    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, revision=None, **kw: asked.append((repo_id, revision)) or str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for typo in ("runs/clip", "./clip", str(tmp_path / "nothing")):
        with pytest.raises(CLIPLoadError, match="no such folder"):
            clip_weights.resolve_clip_directory(typo)
    assert asked == []
    # A hub id (its "organisation" is no folder here) goes to the hub, pinned to a revision if given.
    clip_weights.resolve_clip_directory("openai/clip-vit-base-patch32", revision="3d74acf9")
    clip_weights.resolve_clip_directory("openai/clip-vit-base-patch32")
    assert asked == [("openai/clip-vit-base-patch32", "3d74acf9"), ("openai/clip-vit-base-patch32", None)]
