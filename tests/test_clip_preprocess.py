"""CLIP image preprocessing against transformers' CLIPImageProcessor (its PIL backend)."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from PIL import Image

from clip_ddpm.clip.preprocess import (
    OPENAI_CLIP_STD,
    CLIPPreprocessError,
    PreprocessConfig,
    preprocess_images,
    preprocess_images_jax,
)

# The PIL path repeats transformers' operations exactly; measured difference: 0.0 on every case.
PIL_TOL = 1e-6
# The JAX path reproduces PIL's two 8-bit passes; measured: at most one grey level on a few
# pixels of pure-noise images (1 / 255 / std = 0.0150), mean difference below 1e-4.
JAX_TOL = 1.0 / 255 / min(OPENAI_CLIP_STD) + 1e-5

SIZES = [(37, 53), (64, 64), (100, 23), (23, 100), (16, 16), (300, 224), (33, 33), (20, 40)]


def _reference(images, **processor_kwargs):
    processor = transformers.CLIPImageProcessorPil(**processor_kwargs)
    pixels = processor(images=images, return_tensors="np")["pixel_values"]
    return pixels.transpose(0, 2, 3, 1)  # NCHW -> NHWC


def _noise(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("size", [32, 24])
def test_matches_clip_image_processor_on_many_shapes(size):
    images = [_noise((h, w, 3), seed=i) for i, (h, w) in enumerate(SIZES)]
    ref = _reference(images, size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    ours = preprocess_images(images, PreprocessConfig.for_image_size(size))
    assert ours.dtype == np.float32 and ours.shape == ref.shape == (len(images), size, size, 3)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=PIL_TOL)


@pytest.mark.parametrize("shortest_edge,crop", [(40, 32), (20, 24)])  # crop inside; crop needing padding
def test_config_read_from_a_saved_preprocessor_config(tmp_path, shortest_edge, crop):
    kwargs = dict(size={"shortest_edge": shortest_edge}, crop_size={"height": crop, "width": crop},
                  image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3])
    transformers.CLIPImageProcessorPil(**kwargs).save_pretrained(str(tmp_path))
    config = PreprocessConfig.load(tmp_path, image_size=224)
    assert (config.shortest_edge, config.crop_size) == (shortest_edge, crop)
    images = np.stack([_noise((45, 61, 3), seed=s) for s in range(3)])  # one [N, H, W, 3] array
    np.testing.assert_allclose(preprocess_images(images, config), _reference(list(images), **kwargs),
                               rtol=0, atol=PIL_TOL)


@pytest.mark.parametrize("config_json", [
    {"size": {"height": 40, "width": 28}, "crop_size": {"height": 24, "width": 24}},
    {"size": {"height": 20, "width": 30}},  # no crop_size: transformers' default, 224 (padded)
])
def test_exact_height_width_resize_and_default_crop_match_clip_image_processor(tmp_path, config_json):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "CLIPImageProcessor", **config_json}))
    config = PreprocessConfig.load(tmp_path, image_size=32)
    processor = transformers.CLIPImageProcessorPil.from_pretrained(str(tmp_path))
    assert config.resize_to == (config_json["size"]["height"], config_json["size"]["width"])
    assert config.crop_size == processor.crop_size["height"] == config_json.get("crop_size", {}).get("height", 224)
    images = [_noise((h, w, 3), seed=i) for i, (h, w) in enumerate(SIZES[:4])]
    reference = processor(images=images, return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(preprocess_images(images, config), reference, rtol=0, atol=PIL_TOL)
    same_size = np.stack(images[1:2] * 2)  # the on-device path too
    assert np.abs(np.asarray(preprocess_images_jax(jnp.asarray(same_size), config)) - reference[1]).max() <= JAX_TOL
    # Written back the same way, so transformers reads what we use.
    (tmp_path / "again").mkdir()
    config.save(tmp_path / "again")
    assert PreprocessConfig.load(tmp_path / "again", image_size=32) == config


def test_missing_preprocessor_config_means_openai_defaults(tmp_path):
    config = PreprocessConfig.load(tmp_path, image_size=48)
    ref = transformers.CLIPImageProcessorPil(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48})
    assert config.image_mean == tuple(ref.image_mean) and config.image_std == tuple(ref.image_std)
    assert (config.shortest_edge, config.crop_size) == (48, 48)


def test_grey_alpha_and_pil_inputs_match_clip_image_processor():
    rgba = _noise((30, 41, 4), seed=1)
    pil_rgba = Image.fromarray(rgba, mode="RGBA")            # transparency composited on white
    pil_grey = Image.fromarray(_noise((29, 35), seed=2), mode="L")
    grey = _noise((40, 31), seed=3)                          # 2-D uint8 array (transformers wants PIL)
    ours = preprocess_images([pil_rgba, pil_grey, grey], PreprocessConfig.for_image_size(24))
    ref = _reference([pil_rgba, pil_grey, Image.fromarray(grey)], size={"shortest_edge": 24},
                     crop_size={"height": 24, "width": 24})
    np.testing.assert_allclose(ours, ref, rtol=0, atol=PIL_TOL)


def test_jax_path_is_within_one_grey_level_of_clip_image_processor():
    config = PreprocessConfig.for_image_size(32)
    run = jax.jit(preprocess_images_jax, static_argnums=1)
    for i, (h, w) in enumerate(SIZES):
        images = _noise((2, h, w, 3), seed=10 + i)
        ref = _reference(list(images), size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        ours = np.asarray(run(jnp.asarray(images), config))
        assert ours.shape == ref.shape
        assert np.abs(ours - ref).max() <= JAX_TOL, (h, w)
        assert np.abs(ours - ref).mean() <= 1e-4, (h, w)


def test_jax_path_takes_floats_in_unit_range():
    images = _noise((2, 40, 56, 3), seed=4)
    config = PreprocessConfig.for_image_size(32)
    ref = _reference(list(images), size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    ours = np.asarray(preprocess_images_jax(jnp.asarray(images, jnp.float32) / 255.0, config))
    # No 8-bit rounding here, so within about a grey level of the 8-bit reference.
    assert np.abs(ours - ref).max() <= 1.5 * JAX_TOL


def test_bad_inputs_are_one_clear_error(tmp_path):
    with pytest.raises(CLIPPreprocessError, match="uint8"):
        preprocess_images(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(CLIPPreprocessError, match="shape"):
        preprocess_images(np.zeros((1, 8, 8, 5), np.uint8))
    (tmp_path / "preprocessor_config.json").write_text('{"do_center_crop": false}')
    with pytest.raises(CLIPPreprocessError, match="do_center_crop"):
        PreprocessConfig.load(tmp_path, image_size=32)
