"""CLIP tokenizer: load it, turn prompts into fixed-length id arrays, train a new vocabulary.

The tokenizer itself is transformers' ``CLIPTokenizerFast`` (a byte-level BPE with a ``</w>``
end-of-word suffix, lower-casing, ``<|startoftext|>``/``<|endoftext|>`` around every prompt), so
a vocabulary trained here is read by transformers and by anyone else who uses CLIP checkpoints.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from absl import logging

from clip_ddpm.errors import UserError

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
# CLIP's pre-tokenisation: special tokens, English contractions, letter runs, single digits,
# and runs of other non-space characters each become a word before byte-level BPE.
CLIP_WORD_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
)


class CLIPTokenizerError(UserError, ValueError):
    """Bad input to tokenisation or tokenizer training."""


def import_transformers():
    """transformers, imported only where a tokenizer is really needed (it is heavy), without its
    "PyTorch was not found" advice: the project uses its tokenizers and configs, never its models."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import transformers

    return transformers


def load_tokenizer(directory: str | os.PathLike):
    """The ``CLIPTokenizerFast`` saved in ``directory`` (tokenizer.json or vocab.json + merges.txt)."""
    return import_transformers().CLIPTokenizerFast.from_pretrained(str(directory))


def has_tokenizer_files(directory: str | os.PathLike) -> bool:
    d = Path(directory)
    return (d / "tokenizer.json").is_file() or (
        (d / "vocab.json").is_file() and (d / "merges.txt").is_file()
    )


def tokenize(tokenizer, texts: Sequence[str], context_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids and attention mask, both int32 [len(texts), context_length].

    Every row is padded to ``context_length`` so one jitted text encoder serves every batch.
    A prompt that does not fit is cut (keeping the end-of-text token the pooling needs) and a
    warning names it, because a silently shortened prompt changes what an image is conditioned on.
    """
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise CLIPTokenizerError("texts must be a sequence of strings (wrap a single prompt in a list).")
    if context_length < 2:
        raise CLIPTokenizerError(f"context_length={context_length}; at least 2 (start and end tokens) is needed.")
    texts = list(texts)
    if not texts:
        empty = np.zeros((0, context_length), np.int32)
        return empty, empty.copy()
    full = tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    for text, ids in zip(texts, full):
        if len(ids) > context_length:
            logging.warning("Prompt truncated from %d to %d tokens: %r", len(ids), context_length, text)
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=context_length,
                    return_attention_mask=True)
    return (np.asarray(enc["input_ids"], np.int32), np.asarray(enc["attention_mask"], np.int32))


def _byte_alphabet() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def train_clip_tokenizer(texts: Iterable[str], vocab_size: int, directory: str | os.PathLike,
                         context_length: int = 77):
    """Trains a CLIP-format byte-level BPE on ``texts`` and saves it in ``directory``.

    The vocabulary is laid out as OpenAI's: the 256 byte symbols, the same with ``</w>``, one
    token per merge, then ``<|startoftext|>`` and ``<|endoftext|>`` last, so the end-of-text token
    has the largest id (what the legacy ``eos_token_id == 2`` pooling assumes). Every byte is in
    the vocabulary, so no prompt ever maps to an unknown token. A small corpus may yield fewer
    merges than ``vocab_size`` asks for; the returned tokenizer's ``len()`` is the real size.
    Returns the tokenizer as ``load_tokenizer`` reads it back.
    """
    from tokenizers import (
        Regex,
        Tokenizer,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )

    alphabet = _byte_alphabet()
    base = 2 * len(alphabet) + 2
    if vocab_size < base:
        raise CLIPTokenizerError(f"vocab_size={vocab_size}; a CLIP byte-level vocabulary needs at least {base}.")
    out = Path(directory)
    if out.exists() and any(out.iterdir()):
        raise CLIPTokenizerError(f"{out} is not empty; choose a new directory for the tokenizer.")

    bpe = Tokenizer(models.BPE(unk_token=EOS_TOKEN, end_of_word_suffix="</w>", continuing_subword_prefix=""))
    bpe.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_WORD_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet,
                                  end_of_word_suffix="</w>", show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    merges = [tuple(m) if not isinstance(m, str) else tuple(m.split(" "))
              for m in json.loads(bpe.to_str())["model"]["merges"]]

    tokens = alphabet + [a + "</w>" for a in alphabet]
    seen = set(tokens)
    kept = []
    for a, b in merges:
        if len(tokens) >= vocab_size - 2:
            break
        if a + b not in seen:
            seen.add(a + b)
            tokens.append(a + b)
            kept.append((a, b))
    tokens += [BOS_TOKEN, EOS_TOKEN]

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        with open(Path(tmp) / "vocab.json", "w", encoding="utf-8") as f:
            json.dump({t: i for i, t in enumerate(tokens)}, f, ensure_ascii=False)
        with open(Path(tmp) / "merges.txt", "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in kept))
        tokenizer = _tokenizer_from_files(tmp, context_length)
        for name in ("vocab.json", "merges.txt"):
            (out / name).write_bytes((Path(tmp) / name).read_bytes())
    tokenizer.save_pretrained(str(out))
    return load_tokenizer(out)


def _tokenizer_from_files(directory: str, context_length: int):
    return import_transformers().CLIPTokenizerFast.from_pretrained(
        directory, model_max_length=context_length, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN, unk_token=EOS_TOKEN)
