"""The Flax CLIP against transformers' PyTorch CLIPModel on tiny random checkpoints."""
from __future__ import annotations

import copy
import dataclasses
import fnmatch
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from clip_fixtures import CAPTIONS, make_tiny_clip

from clip_ddpm.clip import weights as clip_weights
from clip_ddpm.clip.tokenizer import tokenize
from clip_ddpm.models.clip import (
    CLIP,
    CLIPConfig,
    CLIPError,
    CLIPTextConfig,
    CLIPVisionConfig,
    init_clip_params,
)

# fp32: measured worst case 1.9e-6 over these configs and seeds.
FP32_TOL = 1e-5
# bf16 compute (fp32 params) against the fp32 reference, measured worst case over these configs
# and seeds: 9.2e-3 on unit-norm embeddings, and 9.2e-3 on logits divided by exp(logit_scale),
# i.e. on the cosines (5.0e-2 on the logits themselves, with exp(logit_scale) ~ 4.5-5.5).
BF16_TOL = 2e-2

CASES = {
    # The tokenizer's own end-of-text id, the largest in the vocabulary (current HF configs).
    "quick_gelu": dict(),
    # eos_token_id == 2, as old OpenAI configs say: transformers pools at argmax(input_ids).
    "gelu_legacy_eos": dict(
        text=dict(hidden_size=48, intermediate_size=80, num_attention_heads=6, num_hidden_layers=1,
                  hidden_act="gelu"),
        vision=dict(hidden_size=40, intermediate_size=72, num_attention_heads=2, num_hidden_layers=3,
                    image_size=16, patch_size=4, hidden_act="gelu"),
        projection_dim=16, eos_token_id=2, seed=1),
    # An end-of-text id in the middle of the vocabulary: pooling at its first occurrence differs
    # from argmax pooling, so using the wrong rule shows.
    "tanh_gelu_mid_eos": dict(
        text=dict(hidden_size=64, intermediate_size=96, num_attention_heads=8, num_hidden_layers=3,
                  hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, max_position_embeddings=20),
        vision=dict(hidden_size=24, intermediate_size=40, num_attention_heads=3, num_hidden_layers=2,
                    image_size=48, patch_size=16, layer_norm_eps=1e-6),
        projection_dim=8, eos_token_id=7, seed=2),
}


@pytest.fixture(scope="module", params=list(CASES))
def ckpt(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param) / "clip"
    model = make_tiny_clip(directory, **CASES[request.param])
    config, params, tokenizer = clip_weights.load_clip(directory)
    return dict(name=request.param, dir=directory, model=model, config=config, params=params,
                tokenizer=tokenizer)


def _random_text_batch(config, rng: np.random.Generator):
    """Random ids with an end-of-text token per row and masks of every shape transformers allows."""
    L, V, eos = config.text.max_position_embeddings, config.text.vocab_size, config.text.eos_token_id
    ids = rng.integers(0, V, size=(6, L))
    ids[ids == eos] = (eos + 1) % V
    eos_pos = np.array([L - 1, 3, 5, L // 2, 4, 6])
    ids[np.arange(6), eos_pos] = eos
    mask = np.ones((6, L), np.int64)
    mask[1, 4:] = 0             # right padding
    mask[2, 6:] = 0
    mask[3, :2] = 0             # left padding
    mask[4, 1:3] = 0            # holes before the end of text
    mask[5, [0, 2, 5]] = 0
    ids[mask == 0] = 0  # padding ids; 0 is never the end of text here
    pooled = np.argmax(ids, axis=-1) if eos == 2 else eos_pos
    assert mask[np.arange(6), pooled].all()  # real inputs never pool a masked-out token
    return ids, mask, eos_pos


def _hf(model, ids, mask, pixels):
    """transformers' outputs; its default attention (sdpa) is the reference."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                    pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2)))
        text = model.get_text_features(input_ids=torch.tensor(ids, dtype=torch.long),
                                       attention_mask=torch.tensor(mask)).pooler_output
        image = model.get_image_features(pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2))).pooler_output
    return dict(text_features=text.numpy(), image_features=image.numpy(),
                text_embeds=out.text_embeds.numpy(), image_embeds=out.image_embeds.numpy(),
                logits_per_image=out.logits_per_image.numpy(), logits_per_text=out.logits_per_text.numpy())


@functools.lru_cache(maxsize=None)
def _forward(config, dtype):
    """One jitted function per (config, dtype) giving every output at once: few compilations."""
    module = CLIP(config, dtype=dtype)

    @jax.jit
    def run(params, ids, mask, pixels):
        v = {"params": params}
        out = module.apply(v, ids, pixels, mask)
        return dict(text_features=module.apply(v, ids, mask, method=CLIP.encode_text),
                    image_features=module.apply(v, pixels, method=CLIP.encode_image),
                    text_embeds=out.text_embeds, image_embeds=out.image_embeds,
                    logits_per_image=out.logits_per_image, logits_per_text=out.logits_per_text)

    return run


def _ours(config, params, ids, mask, pixels, dtype=jnp.float32):
    return _forward(config, dtype)(params, ids, mask.astype(np.int32), pixels)


def _max_errors(ours, ref):
    return {k: float(np.max(np.abs(np.asarray(ours[k], np.float32) - ref[k]))) for k in ref}


def _pixels(config, n, seed):
    v = config.vision
    return np.random.default_rng(seed).standard_normal((n, v.image_size, v.image_size, 3)).astype(np.float32)


def test_random_ids_and_masks_match_transformers_fp32(ckpt):
    config = ckpt["config"]
    ids, mask, eos_pos = _random_text_batch(config, np.random.default_rng(0))
    pixels = _pixels(config, 4, seed=1)
    ref = _hf(ckpt["model"], ids, mask, pixels)
    assert np.isfinite(ref["text_embeds"]).all()
    errors = _max_errors(_ours(config, ckpt["params"], ids, mask, pixels), ref)
    assert max(errors.values()) <= FP32_TOL, errors
    if ckpt["name"] == "tanh_gelu_mid_eos":
        # The batch must tell the two pooling rules apart for this case to mean anything.
        assert (np.argmax(ids, axis=-1) != eos_pos).any()


def test_tokenized_prompts_match_transformers_fp32(ckpt):
    config, tokenizer = ckpt["config"], ckpt["tokenizer"]
    prompts = CAPTIONS[:5] + [" ".join(CAPTIONS)]  # the last one is cut to the context length
    ids, mask = tokenize(tokenizer, prompts, config.text.max_position_embeddings)
    pixels = _pixels(config, 4, seed=2)
    ref = _hf(ckpt["model"], ids, mask, pixels)
    errors = _max_errors(_ours(config, ckpt["params"], ids, mask, pixels), ref)
    assert max(errors.values()) <= FP32_TOL, errors


def test_pooled_token_masked_out_matches_transformers_eager_attention(ckpt):
    """A row whose pooled token is masked out has no attendable key at that query.

    transformers' eager attention (additive large-negative mask) then averages all values
    uniformly, as jax.nn.dot_product_attention does; its sdpa path gives another answer, so the
    eager path, the reference maths, is what this degenerate input is checked against.
    """
    config = ckpt["config"]
    L, eos = config.text.max_position_embeddings, config.text.eos_token_id
    ids = np.full((6, L), 3, np.int64)
    ids[:, 1] = eos if eos != 2 else config.text.vocab_size - 1   # pooled at position 1 either way
    mask = np.ones((6, L), np.int64)
    mask[0, :2] = 0                                                # pooled token masked out
    pixels = _pixels(config, 4, seed=8)
    eager = transformers.CLIPModel.from_pretrained(str(ckpt["dir"]), attn_implementation="eager").eval()
    errors = _max_errors(_ours(config, ckpt["params"], ids, mask, pixels),
                         _hf(eager, ids, mask, pixels))
    assert max(errors.values()) <= FP32_TOL, errors


def test_bf16_compute_within_stated_bound(ckpt):
    config = ckpt["config"]
    ids, mask, _ = _random_text_batch(config, np.random.default_rng(3))
    pixels = _pixels(config, 4, seed=4)
    ref = _hf(ckpt["model"], ids, mask, pixels)
    ours = _ours(config, ckpt["params"], ids, mask, pixels, dtype=jnp.bfloat16)
    assert all(np.asarray(v).dtype == np.float32 for v in ours.values())
    errors = _max_errors(ours, ref)
    assert max(errors[k] for k in ("text_embeds", "image_embeds")) <= BF16_TOL, errors
    scale = float(np.exp(ckpt["params"]["logit_scale"]))
    assert max(errors[k] for k in ("logits_per_image", "logits_per_text")) / scale <= BF16_TOL, errors
    # bf16 really ran: fp32 would be exact to 1e-5.
    assert max(errors.values()) > FP32_TOL


def _perturbed_fresh_params(config, seed):
    rng = np.random.default_rng(seed)
    params = init_clip_params(config, jax.random.key(seed))
    return jax.tree.map(lambda x: np.asarray(x) + 0.05 * rng.standard_normal(x.shape, np.float32), params)


def test_save_clip_round_trips_through_transformers(ckpt, tmp_path):
    """Parameters made here (never seen by transformers) -> save_clip -> CLIPModel.from_pretrained."""
    config = ckpt["config"]
    params = _perturbed_fresh_params(config, seed=5)
    out_dir = clip_weights.save_clip(tmp_path / "saved", config, params, ckpt["tokenizer"])

    model, info = transformers.CLIPModel.from_pretrained(str(out_dir), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ids, mask, _ = _random_text_batch(config, np.random.default_rng(6))
    pixels = _pixels(config, 4, seed=7)
    errors = _max_errors(_ours(config, params, ids, mask, pixels), _hf(model.eval(), ids, mask, pixels))
    assert max(errors.values()) <= FP32_TOL, errors

    config2, params2, tokenizer2 = clip_weights.load_clip(out_dir)
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, params2, params)
    reloaded = transformers.CLIPTokenizerFast.from_pretrained(str(out_dir))
    assert reloaded(CAPTIONS)["input_ids"] == ckpt["tokenizer"](CAPTIONS)["input_ids"]
    processor = transformers.CLIPImageProcessorPil.from_pretrained(str(out_dir))
    assert processor.crop_size["height"] == config.vision.image_size


def test_save_clip_refuses_a_non_empty_directory(ckpt, tmp_path):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(clip_weights.CLIPSaveError, match="overwrite=True"):
        clip_weights.save_clip(target, ckpt["config"], ckpt["params"])
    clip_weights.save_clip(target, ckpt["config"], ckpt["params"], overwrite=True)
    assert (target / "model.safetensors").is_file() and (target / "notes.txt").read_text() == "keep me"


def test_save_clip_rejects_params_of_another_config(ckpt, tmp_path):
    other = jax.tree.map(lambda x: x, ckpt["params"])
    other["text_projection"] = {"kernel": np.zeros((3, 3), np.float32)}
    with pytest.raises(clip_weights.CLIPSaveError, match="text_projection"):
        clip_weights.save_clip(tmp_path / "x", ckpt["config"], other)


def test_checkpoint_not_matching_its_config_is_one_clear_error(ckpt, tmp_path):
    target = tmp_path / "edited"
    target.mkdir()
    for f in ckpt["dir"].iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((target / "config.json").read_text())
    cfg["projection_dim"] = 2 * cfg["projection_dim"]
    (target / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(clip_weights.CLIPLoadError, match="wrong shape: text_projection"):
        clip_weights.load_clip(target)


def test_pickled_only_checkpoint_is_refused(ckpt, tmp_path):
    target = tmp_path / "pickled"
    target.mkdir()
    (target / "config.json").write_bytes((ckpt["dir"] / "config.json").read_bytes())
    torch.save(ckpt["model"].state_dict(), target / "pytorch_model.bin")
    with pytest.raises(clip_weights.CLIPLoadError, match="safe_serialization=True"):
        clip_weights.load_clip(target)


def test_unreachable_hub_id_is_a_clip_load_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(clip_weights.CLIPLoadError, match="could not be reached") as err:
        clip_weights.load_clip("clip-ddpm-tests/no-such-clip")
    assert "clip-ddpm-tests/no-such-clip" in str(err.value)


def test_missing_local_directory_is_a_clip_load_error(tmp_path):
    with pytest.raises(clip_weights.CLIPLoadError, match="not a directory"):
        clip_weights.load_clip(str(tmp_path / "nowhere"))


def _assert_same_fields(ours, hf):
    for tower, hf_tower in ((ours.text, hf.text_config), (ours.vision, hf.vision_config)):
        for field in dataclasses.fields(tower):
            assert getattr(tower, field.name) == getattr(hf_tower, field.name), field.name
    assert (ours.projection_dim, ours.logit_scale_init_value) == (hf.projection_dim, hf.logit_scale_init_value)


def test_config_json_is_read_and_written_as_transformers_does():
    """An old-style config.json (overrides in text_config_dict, eos_token_id=2) read by both."""
    d = {
        "model_type": "clip", "projection_dim": 16, "logit_scale_init_value": 2.0,
        "text_config": {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                        "num_hidden_layers": 2, "vocab_size": 99, "max_position_embeddings": 12,
                        "eos_token_id": 2, "bos_token_id": 0, "pad_token_id": 1, "hidden_act": "gelu"},
        "text_config_dict": {"hidden_size": 48, "num_attention_heads": 6},
        "vision_config": {"hidden_size": 24, "intermediate_size": 40, "num_attention_heads": 3,
                          "num_hidden_layers": 1, "image_size": 28, "patch_size": 7, "layer_norm_eps": 1e-6},
        "vision_config_dict": None,
    }
    ours = CLIPConfig.from_hf_dict(d)
    _assert_same_fields(ours, transformers.CLIPConfig.from_dict(copy.deepcopy(d)))  # it edits its input
    assert ours.text.hidden_size == 48 and ours.vision.image_size == 28
    d.pop("text_config_dict")
    ours = CLIPConfig.from_hf_dict(d)
    _assert_same_fields(ours, transformers.CLIPConfig.from_dict(copy.deepcopy(d)))  # it edits its input
    assert ours.text.hidden_size == 32 and ours.text.eos_token_id == 2
    _assert_same_fields(ours, transformers.CLIPConfig.from_dict(ours.to_hf_dict()))
    defaults = CLIPConfig.from_hf_dict({"model_type": "clip"})
    _assert_same_fields(defaults, transformers.CLIPConfig())


def test_unusable_configs_are_one_clear_error():
    with pytest.raises(CLIPError, match="hidden_act"):
        CLIPTextConfig(hidden_act="swish")
    with pytest.raises(CLIPError, match="multiple of num_attention_heads"):
        CLIPVisionConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(CLIPError, match="square"):
        CLIPVisionConfig.from_hf_dict({"image_size": [224, 160]})
    with pytest.raises(CLIPError, match="model_type"):
        CLIPConfig.from_hf_dict({"model_type": "siglip"})


def test_hub_ids_fetch_only_safe_files(ckpt, monkeypatch):
    """A hub id goes through huggingface_hub's snapshot_download (stubbed here with the local
    checkpoint), asking for config, safetensors and tokenizer files and never for pickles."""
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, **kwargs):
        calls.append((repo_id, allow_patterns))
        return str(ckpt["dir"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    config, params, tokenizer = clip_weights.load_clip("some-org/tiny-clip")
    assert config == ckpt["config"] and tokenizer is not None
    (repo_id, patterns), = calls
    assert repo_id == "some-org/tiny-clip"
    wanted = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "preprocessor_config.json", "vocab.json", "merges.txt"]
    assert all(any(fnmatch.fnmatch(f, p) for p in patterns) for f in wanted)
    for refused in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack"):
        assert not any(fnmatch.fnmatch(refused, p) for p in patterns)
