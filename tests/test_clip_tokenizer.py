"""Tokenisation for CLIP: padding, truncation, end-of-text position, training a vocabulary."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import transformers
from clip_fixtures import CAPTIONS, make_tokenizer

from clip_ddpm.clip.tokenizer import CLIPTokenizerError, tokenize, train_clip_tokenizer

L = 16
LONG = "a small green triangle next to a big yellow square above two purple stars and a red circle"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok") / "t", context_length=L)


def test_tokenize_pads_and_truncates_like_transformers(tokenizer):
    texts = CAPTIONS[:3] + [LONG, ""]
    ids, mask = tokenize(tokenizer, texts, L)
    ref = tokenizer(texts, padding="max_length", truncation=True, max_length=L)
    assert ids.dtype == np.int32 and mask.dtype == np.int32 and ids.shape == mask.shape == (5, L)
    np.testing.assert_array_equal(ids, ref["input_ids"])
    np.testing.assert_array_equal(mask, ref["attention_mask"])
    assert (ids[mask == 0] == tokenizer.pad_token_id).all()
    assert mask[3].all() and not mask[0].all()          # the long prompt fills the context


def test_truncation_warns_naming_the_prompt(tokenizer, caplog):
    with caplog.at_level(logging.WARNING):
        tokenize(tokenizer, ["a red circle", CAPTIONS[0]], L)
    assert not any("truncated" in r.getMessage() for r in caplog.records)
    with caplog.at_level(logging.WARNING):
        ids, _ = tokenize(tokenizer, ["a red circle", LONG], L)
    messages = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(messages) == 1 and LONG in messages[0]
    assert ids[1, -1] == tokenizer.eos_token_id         # the cut prompt still ends with end-of-text


def test_end_of_text_is_where_transformers_pools(tokenizer):
    """transformers' CLIP text model pools at the first end-of-text id (or argmax for legacy
    configs); both must land on the last real token of every tokenized row."""
    ids, mask = tokenize(tokenizer, CAPTIONS[:4] + [LONG], L)
    last_real = mask.sum(axis=1) - 1
    for eos_token_id in (tokenizer.eos_token_id, 2):
        config = transformers.CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_attention_heads=2,
            num_hidden_layers=1, max_position_embeddings=L, eos_token_id=eos_token_id)
        torch.manual_seed(0)
        model = transformers.CLIPTextModel(config).eval()
        with torch.no_grad():
            out = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
        expected = out.last_hidden_state[torch.arange(len(ids)), torch.tensor(last_real)]
        torch.testing.assert_close(out.pooler_output, expected, rtol=0, atol=0)


def test_trained_vocabulary_is_in_clip_format(tmp_path):
    tok = train_clip_tokenizer(CAPTIONS * 4, 600, tmp_path / "t", context_length=L)
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "t"))
    vocab = json.loads((tmp_path / "t" / "vocab.json").read_text())
    n = len(tok)
    assert n <= 600 and len(vocab) == n
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (n - 2, n - 1, n - 1)
    assert vocab["<|endoftext|>"] == n - 1 and vocab["circle</w>"] < n - 2
    assert tok.convert_ids_to_tokens(tok("A  Red CIRCLE")["input_ids"]) == [
        "<|startoftext|>", "a</w>", "red</w>", "circle</w>", "<|endoftext|>"]
    # Bytes never seen in training still encode (no unknown token) and decode back.
    text = "naïve café 😀 zebra"
    ids = auto(text)["input_ids"]
    assert ids == tok(text)["input_ids"]
    assert tok.eos_token_id not in ids[1:-1]
    assert auto.decode(ids, skip_special_tokens=True) == text
    # Digits are single words in CLIP's pre-tokenisation, so they decode spaced out.
    assert auto.decode(auto("#42")["input_ids"], skip_special_tokens=True) == "# 4 2"
    # transformers' slow-format files (vocab.json + merges.txt) give the same tokenizer.
    merges = (tmp_path / "t" / "merges.txt").read_text().splitlines()[1:]
    rebuilt = transformers.CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges])
    assert rebuilt(CAPTIONS + [text])["input_ids"] == tok(CAPTIONS + [text])["input_ids"]


def test_bad_tokenizer_input_is_one_clear_error(tokenizer, tmp_path):
    with pytest.raises(CLIPTokenizerError, match="sequence of strings"):
        tokenize(tokenizer, "a red circle", L)
    with pytest.raises(CLIPTokenizerError, match="vocab_size"):
        train_clip_tokenizer(CAPTIONS, 100, tmp_path / "small")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(CLIPTokenizerError, match="not empty"):
        train_clip_tokenizer(CAPTIONS, 600, tmp_path / "busy")
