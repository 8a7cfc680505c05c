"""CLIPEncoder (texts/images -> unit-norm embeddings, batched) against transformers' CLIPModel."""
from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
import transformers
from clip_fixtures import CAPTIONS, make_tiny_clip

from clip_ddpm.clip import weights as clip_weights
from clip_ddpm.clip.encoder import CLIPEncoder
from clip_ddpm.models.clip import CLIPError

TOL = 1e-5


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    directory = tmp_path_factory.mktemp("enc") / "clip"
    model = make_tiny_clip(directory, vision=dict(image_size=24, patch_size=6), seed=3)
    return directory, model


def _unit(x: torch.Tensor) -> np.ndarray:
    x = x.numpy()
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_encode_texts_matches_transformers_across_batches(ckpt):
    directory, model = ckpt
    encoder = CLIPEncoder.from_pretrained(directory, batch_size=3)
    texts = CAPTIONS[:7]  # batches of 3, 3 and a padded 1
    ours = encoder.encode_texts(texts)
    tokenizer = transformers.CLIPTokenizerFast.from_pretrained(str(directory))
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=encoder.context_length,
                    return_tensors="pt")
    with torch.no_grad():
        ref = _unit(model.get_text_features(**enc).pooler_output)
    assert ours.dtype == np.float32 and ours.shape == (7, encoder.embedding_dim)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL)
    np.testing.assert_allclose(encoder.encode_texts(texts, batch_size=8), ref, rtol=0, atol=TOL)


def test_encode_images_matches_transformers_with_its_processor(ckpt):
    directory, model = ckpt
    encoder = CLIPEncoder.from_pretrained(directory, batch_size=2)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(30, 40), (24, 24), (50, 31), (17, 60), (64, 64)]]
    processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24})
    with torch.no_grad():
        pixels = torch.tensor(processor(images=images, return_tensors="np")["pixel_values"])
        ref = _unit(model.get_image_features(pixel_values=pixels).pooler_output)
    ours = encoder.encode_images(images)
    assert ours.shape == (5, encoder.embedding_dim)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL)
    np.testing.assert_allclose(encoder.encode_pixel_values(pixels.numpy().transpose(0, 2, 3, 1)), ref,
                               rtol=0, atol=TOL)


def test_weights_hash_and_name_identify_the_weights(ckpt):
    directory, _ = ckpt
    from_disk = CLIPEncoder.from_pretrained(directory)
    config, params, tokenizer = clip_weights.load_clip(directory)
    in_memory = CLIPEncoder(config, params, tokenizer, name="mine")
    assert from_disk.name == str(directory) and in_memory.name == "mine"
    assert from_disk.weights_hash == in_memory.weights_hash and len(in_memory.weights_hash) == 64
    changed = jax.tree.map(np.array, params)
    changed["logit_scale"] = changed["logit_scale"] + 1.0
    assert CLIPEncoder(config, changed).weights_hash != in_memory.weights_hash


def test_empty_inputs_and_missing_tokenizer(ckpt):
    directory, _ = ckpt
    config, params, _ = clip_weights.load_clip(directory)
    encoder = CLIPEncoder(config, params, tokenizer=None)
    assert encoder.encode_images(np.zeros((0, 24, 24, 3), np.uint8)).shape == (0, config.projection_dim)
    with pytest.raises(CLIPError, match="no tokenizer"):
        encoder.encode_texts(["a red circle"])
