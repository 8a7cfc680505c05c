"""The CLIP-embedding cache and the sharded encoder, on a tiny random CLIP saved by transformers."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from clip_fixtures import make_tiny_clip

from clip_ddpm.clip import embedding_cache as embeddings
from clip_ddpm.clip import weights as clip_weights
from clip_ddpm.clip.embedding_cache import (
    EmbeddingCacheError,
    EmbedRequest,
    build_embeddings,
    embed_dataset,
    load_embeddings,
)
from clip_ddpm.clip.encoder import CLIPEncoder, padded_batch
from clip_ddpm.data import load_dataset
from clip_ddpm.errors import UserError
from clip_ddpm.training import parallel


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("emb") / "clip"
    make_tiny_clip(directory, seed=5)
    return directory


@pytest.fixture(scope="module")
def encoder(clip_dir):
    return CLIPEncoder.from_pretrained(clip_dir, batch_size=8)


@pytest.fixture(scope="module")
def shapes():
    return load_dataset("shapes", split="train", image_size=16, num_images=10)


class Interrupted(Exception):
    pass


def _counting(monkeypatch, encoder, method: str, fail_after: int | None = None) -> list[int]:
    """Wraps encoder.<method> to count its calls (and raise on call number fail_after + 1)."""
    calls, original = [], getattr(encoder, method)

    def wrapped(items, *args, **kwargs):
        if fail_after is not None and len(calls) >= fail_after:
            raise Interrupted
        calls.append(len(items))
        return original(items, *args, **kwargs)

    monkeypatch.setattr(encoder, method, wrapped)
    return calls


def test_padded_batches_split_evenly_over_devices():
    assert [padded_batch(n, 8, 4) for n in (1, 2, 3, 4, 5, 8)] == [4, 4, 4, 4, 8, 8]
    assert [padded_batch(n, 12, 3) for n in (1, 4, 5, 9, 12)] == [3, 6, 9, 12, 12]


def test_sharded_encode_equals_unsharded(clip_dir, encoder, shapes):
    assert jax.device_count() == 4 and encoder.num_devices == 4
    plain = CLIPEncoder.from_pretrained(clip_dir, batch_size=8, mesh=parallel.make_mesh(jax.devices()[:1]))
    # 10 images: a full batch of 8, then 2 padded to 4 (one row per device).
    np.testing.assert_allclose(encoder.encode_images(shapes.images), plain.encode_images(shapes.images),
                               rtol=0, atol=1e-5)
    np.testing.assert_allclose(encoder.encode_texts(list(shapes.captions)),
                               plain.encode_texts(list(shapes.captions)), rtol=0, atol=1e-5)
    assert encoder.weights_hash == plain.weights_hash and encoder.batch_size == 8
    on_device = encoder.embed_pixels(np.zeros((8, 32, 32, 3), np.float32))
    assert len(on_device.sharding.device_set) == 4 and not on_device.sharding.is_fully_replicated
    assert {s.data.shape for s in on_device.addressable_shards} == {(2, encoder.embedding_dim)}
    with pytest.raises(ValueError, match="does not split"):
        encoder.embed_pixels(np.zeros((6, 32, 32, 3), np.float32))


def test_interrupted_build_resumes_to_the_straight_result(tmp_path, monkeypatch, encoder, shapes):
    straight = build_embeddings(shapes, encoder, "image", tmp_path / "straight", shard_size=3)
    assert straight.shape == (10, encoder.embedding_dim) and straight.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(straight, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(straight, encoder.encode_images(shapes.images), rtol=0, atol=1e-5)

    resumed_dir = tmp_path / "resumed"
    _counting(monkeypatch, encoder, "encode_images", fail_after=2)
    with pytest.raises(Interrupted):
        build_embeddings(shapes, encoder, "image", resumed_dir, shard_size=3)
    manifest = json.loads((resumed_dir / "manifest.json").read_text())
    assert manifest["finished_shards"] == [0, 1] and manifest["num_shards"] == 4
    assert sorted(p.name for p in resumed_dir.glob("shard_*.npy")) == ["shard_00000.npy", "shard_00001.npy"]
    with pytest.raises(EmbeddingCacheError, match="unfinished"):
        load_embeddings(resumed_dir)

    monkeypatch.undo()
    calls = _counting(monkeypatch, encoder, "encode_images")
    # A different shard size asked on restart: the cache keeps its own.
    resumed = build_embeddings(shapes, encoder, "image", resumed_dir, shard_size=5)
    assert calls == [3, 1]  # only shards 2 and 3 were computed
    assert np.array_equal(resumed, straight) and np.array_equal(load_embeddings(resumed_dir), straight)

    (resumed_dir / "shard_00001.npy").unlink()  # a damaged cache heals the missing shard only
    calls.clear()
    assert np.array_equal(build_embeddings(shapes, encoder, "image", resumed_dir), straight)
    assert calls == [3]
    calls.clear()
    build_embeddings(shapes, encoder, "image", resumed_dir)
    assert calls == []


def test_caption_embeddings_are_cached_as_text(tmp_path, encoder, shapes):
    vectors = build_embeddings(shapes, encoder, "text", tmp_path / "text", shard_size=4)
    np.testing.assert_allclose(vectors, encoder.encode_texts(list(shapes.captions)), rtol=0, atol=1e-5)
    manifest = json.loads((tmp_path / "text" / "manifest.json").read_text())
    assert manifest["kind"] == "text" and manifest["preprocessing"]["context_length"] == 16
    assert manifest["finished_shards"] == [0, 1, 2]
    with pytest.raises(EmbeddingCacheError, match="kind: cached 'text', wanted 'image'"):
        build_embeddings(shapes, encoder, "image", tmp_path / "text")


def test_mismatched_manifest_is_refused(tmp_path, clip_dir, encoder, shapes):
    directory = tmp_path / "cache"
    build_embeddings(shapes, encoder, "image", directory, split="train", shard_size=4)
    other_data = load_dataset("shapes", split="train", image_size=16, num_images=10, seed=1)
    config, params, tokenizer = clip_weights.load_clip(clip_dir)
    params["logit_scale"] = params["logit_scale"] + 1.0
    params["visual_projection"]["kernel"] = params["visual_projection"]["kernel"] * 2.0
    other_model = CLIPEncoder(config, params, tokenizer, name=str(clip_dir))
    cases = [
        (dict(dataset=other_data), "dataset: cached 'shapes-train-16px-seed0-n10'"),
        (dict(split="test"), "split: cached 'train', wanted 'test'"),
        (dict(dataset=shapes.subset(np.arange(6))), "count: cached 10, wanted 6"),
        (dict(encoder=other_model), "weights_hash"),
    ]
    for changes, message in cases:
        args = dict(dataset=shapes, encoder=encoder, kind="image", directory=directory, split="train")
        args.update(changes)
        with pytest.raises(EmbeddingCacheError) as error:
            build_embeddings(**args)
        assert message in str(error.value) and "\n" not in str(error.value)
        assert isinstance(error.value, UserError) and "delete that folder" in str(error.value)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["finished_shards"] == [0, 1, 2]  # refusals leave the cache as it was


def test_default_location_and_manifest(tmp_path, monkeypatch, encoder, shapes):
    monkeypatch.setenv(embeddings.CACHE_ENV, str(tmp_path / "env_root"))
    assert embeddings.cache_root() == tmp_path / "env_root"
    assert embeddings.cache_root(tmp_path / "flag_root") == tmp_path / "flag_root"
    monkeypatch.delenv(embeddings.CACHE_ENV)
    assert str(embeddings.cache_root()).endswith(".cache/clip_ddpm")

    vectors, folder = embeddings.cached_embeddings(shapes, encoder, "image", tmp_path / "root")
    assert folder == (tmp_path / "root" / "clip_cache" / f"shapes-train-16px-seed0-n10-{encoder.fingerprint[:16]}"
                      / "image")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {k: manifest[k] for k in ("dataset", "split", "count", "kind", "embedding_dim", "dtype",
                                     "normalization", "shard_size", "num_shards", "finished_shards")} == {
        "dataset": shapes.name, "split": "train", "count": 10, "kind": "image", "embedding_dim": 24,
        "dtype": "float32", "normalization": "l2", "shard_size": 1024, "num_shards": 1, "finished_shards": [0]}
    assert manifest["clip_model"] == str(encoder.name) and manifest["weights_hash"] == encoder.weights_hash
    assert manifest["preprocessing"]["crop_size"] == 32 and len(manifest["data_sha256"]) == 64
    again, _ = embeddings.cached_embeddings(shapes, encoder, "image", tmp_path / "root")
    assert np.array_equal(again, vectors)


def test_embed_command_builds_what_training_reads_and_refuses_a_foreign_cache(tmp_path, clip_dir, encoder):
    request = EmbedRequest(clip_model=str(clip_dir), dataset="shapes", image_size=16, dataset_size=6,
                           cache_dir=str(tmp_path), kinds=("image", "text"), shard_size=4, batch_size=4)
    folders = embed_dataset(request)
    data = load_dataset("shapes", split="train", image_size=16, num_images=6)
    for kind, encode in (("image", encoder.encode_images), ("text", encoder.encode_texts)):
        expected = encode(data.images if kind == "image" else list(data.captions))
        np.testing.assert_allclose(load_embeddings(folders[kind]), expected, rtol=0, atol=1e-5)
    with pytest.raises(UserError, match="--kind must list"):
        embed_dataset(EmbedRequest(clip_model=str(clip_dir), kinds=("pixels",)))

    # A cache under the same name made from other pictures must stop the command with one line.
    manifest_path = Path(folders["image"]) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps(dict(manifest, data_sha256="0" * 64)))
    result = subprocess.run(
        [sys.executable, "-m", "clip_ddpm.embed", "--dataset=shapes", "--image_size=16", "--dataset_size=6",
         f"--clip_model={clip_dir}", f"--cache_dir={tmp_path}"],
        capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: embedding cache") and "data_sha256" in lines[0], lines


def test_text_cache_key_ignores_the_tokenizer_settings_that_using_it_rewrites(tmp_path, encoder, shapes):
    backend = encoder.tokenizer.backend_tokenizer
    before_state, before_key = backend.to_str(), embeddings.tokenizer_sha256(encoder.tokenizer)
    first = build_embeddings(shapes, encoder, "text", tmp_path / "text")  # pads and truncates
    encoder.tokenizer(["a red circle"], padding="max_length", max_length=7, truncation=True)
    assert backend.to_str() != before_state  # the serialised state did change (the old key did too)
    assert embeddings.tokenizer_sha256(encoder.tokenizer) == before_key
    again = build_embeddings(shapes, encoder, "text", tmp_path / "text")  # a second build in one process
    np.testing.assert_array_equal(again, first)


def test_cache_key_and_run_check_cover_the_clip_config_and_compute_dtype(tmp_path, clip_dir, encoder, shapes):
    import dataclasses

    import jax.numpy as jnp

    from clip_ddpm.training.workdir import check_same_clip

    config, params, tokenizer = clip_weights.load_clip(clip_dir)
    other_eps = dataclasses.replace(config, text=dataclasses.replace(config.text, layer_norm_eps=1e-3))
    variants = {"config": CLIPEncoder(other_eps, params, tokenizer, name=str(clip_dir)),
                "dtype": CLIPEncoder(config, params, tokenizer, name=str(clip_dir), dtype=jnp.bfloat16)}
    folders = {embeddings.cached_embeddings(shapes, encoder, "text", tmp_path)[1]}
    trained = (encoder.weights_hash, encoder.fingerprint)
    for what, variant in variants.items():
        assert variant.weights_hash == encoder.weights_hash and variant.fingerprint != encoder.fingerprint
        folders.add(embeddings.cached_embeddings(shapes, variant, "text", tmp_path)[1])
        with pytest.raises(UserError, match="another config or compute dtype"):
            check_same_clip(trained, str(clip_dir), variant.weights_hash, variant.fingerprint)
    assert len(folders) == 3  # three caches, none refused as "other embeddings" nor mixed up
    manifest = json.loads((sorted(folders)[0] / "manifest.json").read_text())
    assert {"clip_config_sha256", "compute_dtype"} <= set(embeddings.IDENTITY_FIELDS) <= set(manifest)
    check_same_clip(trained, str(clip_dir), encoder.weights_hash, encoder.fingerprint)
    check_same_clip((encoder.weights_hash, ""), str(clip_dir), encoder.weights_hash, "x")  # older record


def test_a_process_slice_reads_its_rows_from_the_whole_split_cache(tmp_path, monkeypatch, encoder):
    """What `clip_ddpm.embed` writes (the whole split) serves every process of a multi-host run,
    each holding only its slice, without computing anything."""
    whole = load_dataset("shapes", split="train", image_size=16, num_images=10)
    vectors, _ = embeddings.cached_embeddings(whole, encoder, "image", tmp_path)
    second_half = load_dataset("shapes", split="train", image_size=16, num_images=10, process_index=1,
                               process_count=2)
    assert second_half.name != whole.name and len(second_half) == 5
    monkeypatch.setattr(embeddings, "jax", type("TwoProcesses", (), {"process_index": staticmethod(lambda: 1),
                                                                     "process_count": staticmethod(lambda: 2)}))
    monkeypatch.setattr(encoder, "encode_images", lambda *a, **k: pytest.fail("embedded again"))
    rows, folder = embeddings.cached_embeddings(second_half, encoder, "image", tmp_path)
    assert folder.parent.name.startswith(whole.name)
    np.testing.assert_array_equal(rows, vectors[5:])
