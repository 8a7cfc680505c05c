"""Hugging Face CLIP checkpoints <-> Flax parameters, read and written as safetensors.

A checkpoint is a directory in the transformers layout (config.json, model.safetensors,
tokenizer files, preprocessor_config.json) or a hub id resolved through huggingface_hub's cache.
Weights are only ever read from safetensors: a pickled ``pytorch_model.bin`` can run code when
loaded, so it is refused with the one-line conversion that makes it safe.
"""
from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging
from flax import traverse_util

from clip_ddpm.clip import preprocess as clip_preprocess
from clip_ddpm.clip.tokenizer import (
    TOKENIZER_FILES,
    has_tokenizer_files,
    load_tokenizer,
    tokenize,
)
from clip_ddpm.errors import UserError
from clip_ddpm.models.clip import CLIPConfig, CLIPError, clip_param_shapes

__all__ = [
    "CLIPLoadError", "CLIPSaveError", "load_clip", "save_clip", "resolve_clip_directory",
    "hf_to_flax", "flax_to_hf", "read_safetensors", "weight_files", "tokenize",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
HUB_PATTERNS = [CONFIG_FILE, "model*.safetensors", WEIGHTS_INDEX_FILE,
                clip_preprocess.PREPROCESSOR_FILE, *TOKENIZER_FILES]
# Modules whose 2-D "weight" is an embedding table (kept as is), not a Linear matrix (transposed).
_EMBEDDING_MODULES = ("token_embedding", "position_embedding")


class CLIPLoadError(UserError, RuntimeError):
    """A CLIP checkpoint that cannot be found, reached, or read."""


class CLIPSaveError(UserError, RuntimeError):
    """A CLIP checkpoint that cannot be written where asked."""


# ---------------------------------------------------------------------------- conversion

def _hf_key_to_path(key: str) -> tuple[str, ...]:
    return tuple(re.sub(r"\blayers\.(\d+)", r"layers_\1", key).split("."))


def _path_to_hf_key(path: tuple[str, ...]) -> str:
    return re.sub(r"\blayers_(\d+)", r"layers.\1", ".".join(path))


def hf_to_flax(state: Mapping[str, np.ndarray], config: CLIPConfig) -> dict[str, Any]:
    """A transformers ``CLIPModel`` state dict (numpy) as our Flax parameter tree (float32).

    Linear weights are [out, in] in PyTorch and [in, out] in Flax; convolutions go OIHW -> HWIO;
    LayerNorm ``weight`` is Flax's ``scale``. Every parameter of ``config`` must be present with
    its shape, and nothing else (the non-persistent ``position_ids`` buffers aside).
    """
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        *module, leaf = _hf_key_to_path(key)
        value = np.asarray(value, dtype=np.float32)
        if leaf == "weight":
            if value.ndim == 1:
                leaf = "scale"
            elif value.ndim == 2 and module and module[-1] in _EMBEDDING_MODULES:
                leaf = "embedding"
            elif value.ndim == 2:
                leaf, value = "kernel", value.T
            elif value.ndim == 4:
                leaf, value = "kernel", value.transpose(2, 3, 1, 0)
        flat[(*module, leaf)] = np.array(value, dtype=np.float32, order="C")
    _check_against_config(flat, config, "checkpoint")
    return traverse_util.unflatten_dict(flat)


def flax_to_hf(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Our Flax parameter tree as a transformers ``CLIPModel`` state dict (numpy float32)."""
    state = {}
    for path, value in traverse_util.flatten_dict(dict(params)).items():
        *module, leaf = path
        value = np.asarray(value, dtype=np.float32)
        if leaf == "scale" or leaf == "embedding":
            leaf = "weight"
        elif leaf == "kernel" and value.ndim == 2:
            leaf, value = "weight", value.T
        elif leaf == "kernel" and value.ndim == 4:
            leaf, value = "weight", value.transpose(3, 2, 0, 1)
        state[_path_to_hf_key((*module, leaf))] = np.array(value, dtype=np.float32, order="C")
    return state


def _check_against_config(flat: Mapping[tuple[str, ...], np.ndarray], config: CLIPConfig, what: str) -> None:
    expected = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(clip_param_shapes(config)).items()}
    missing = sorted(_path_to_hf_key(k) for k in expected.keys() - flat.keys())
    unexpected = sorted(_path_to_hf_key(k) for k in flat.keys() - expected.keys())
    wrong = sorted(f"{_path_to_hf_key(k)}: {tuple(flat[k].shape)} vs {expected[k]} expected"
                   for k in expected.keys() & flat.keys() if tuple(flat[k].shape) != expected[k])
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            more = f" (and {len(items) - 8} more)" if len(items) > 8 else ""
            problems.append(f"{label}: {', '.join(items[:8])}{more}")
    if problems:
        raise CLIPLoadError(f"The {what} does not match its CLIP config; " + "; ".join(problems))


# ---------------------------------------------------------------------------- reading

def resolve_clip_directory(name_or_dir: str | os.PathLike, revision: str | None = None) -> Path:
    """A local directory as is, or a hub id downloaded (config, safetensors, tokenizer only).

    A name that reads as a path on this machine is never sent to the hub: one that starts with
    ".", "/" or "~", and one whose parent folder exists here (`runs/clip` where `runs/` exists),
    are local directories that are missing, most likely mistyped, not repositories named so.
    `revision` pins a hub id to a branch, tag or commit.
    """
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_dir)
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or (
        "/" in name and path.parent.is_dir())
    if path.exists() or looks_local:
        raise CLIPLoadError(f"CLIP model {name!r} is not a directory: no such folder here (and, as it reads as a "
                            "local path, it is not looked up on the Hugging Face hub)")
    from huggingface_hub import errors, snapshot_download

    def first_line(error: Exception) -> str:  # hub errors span lines; ours is one
        return (str(error).strip().splitlines() or [type(error).__name__])[0]

    try:
        return Path(snapshot_download(repo_id=name, revision=revision or None, allow_patterns=HUB_PATTERNS))
    except errors.HFValidationError as e:
        raise CLIPLoadError(f"{name!r} is neither a local directory nor a valid hub id: {first_line(e)}") from e
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError, errors.GatedRepoError) as e:
        raise CLIPLoadError(f"The Hugging Face hub has no accessible model {name!r}"
                            f"{f' at revision {revision!r}' if revision else ''}: {first_line(e)}") from e
    except Exception as e:  # offline mode, no network, timeouts, HTTP errors: one message for all
        raise CLIPLoadError(
            f"Could not fetch CLIP model {name!r}: the Hugging Face hub could not be reached and the "
            f"model is not in the local cache ({type(e).__name__}: {first_line(e)}). Download it where the hub "
            "is reachable, or pass a local directory holding config.json and model.safetensors."
        ) from e


def _index_files(directory: Path) -> list[Path]:
    """The shard files a model.safetensors.index.json names, each inside `directory`."""
    index_path = directory / WEIGHTS_INDEX_FILE
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError) as e:
        raise CLIPLoadError(f"{index_path} is not readable JSON: {e}") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CLIPLoadError(f"{index_path} has no \"weight_map\" (tensor name -> shard file); it is not a "
                            "safetensors index")
    files = []
    for name in sorted(set(map(str, weight_map.values()))):
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise CLIPLoadError(f"{index_path} names the shard {name!r}, outside the checkpoint directory; refused")
        files.append(directory / relative)
    return files


def weight_files(directory: str | os.PathLike) -> list[Path]:
    """The safetensors file(s) of a checkpoint directory, refusing pickled-only checkpoints."""
    d = Path(directory)
    if (d / WEIGHTS_FILE).is_file():
        return [d / WEIGHTS_FILE]
    if (d / WEIGHTS_INDEX_FILE).is_file():
        return _index_files(d)
    if any((d / name).is_file() for name in PICKLED_WEIGHTS):
        raise CLIPLoadError(
            f"{d} holds only pickled PyTorch weights (pytorch_model.bin), which are never unpickled "
            "here because loading a pickle can run arbitrary code. Convert them once with "
            "transformers: CLIPModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)."
        )
    raise CLIPLoadError(f"{d} has no {WEIGHTS_FILE}; a CLIP checkpoint directory needs config.json "
                        "and model.safetensors.")


# safetensors dtype names -> numpy dtypes; BF16 has no numpy dtype and is widened by hand.
_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
                       "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _read_one_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of one .safetensors file; floating point ones as float32.

    Published CLIPs are often stored in bfloat16 or float16, and the Flax model computes in
    float32 parameters, so they are widened here (exactly: both are subsets of float32).
    """
    data = path.read_bytes()
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + length])
    except (struct.error, ValueError) as e:
        raise CLIPLoadError(f"{path} is not a safetensors file ({e})") from None
    body = memoryview(data)[8 + length:]
    state = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CLIPLoadError(f"{path}: the header entry of {name!r} is malformed") from None
        itemsize = 2 if dtype == "BF16" else np.dtype(_SAFETENSORS_DTYPES.get(dtype, np.uint8)).itemsize
        if dtype != "BF16" and dtype not in _SAFETENSORS_DTYPES:
            raise CLIPLoadError(f"{path}: tensor {name!r} has dtype {dtype}, which is not supported")
        if not 0 <= begin <= end <= len(body) or end - begin != itemsize * int(np.prod(shape, dtype=np.int64)):
            raise CLIPLoadError(f"{path}: tensor {name!r} lies outside the file or has the wrong size "
                                "(is the file truncated?)")
        raw = body[begin:end]
        if dtype == "BF16":  # bfloat16 is the top half of a float32
            array = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            array = np.frombuffer(raw, np.dtype(_SAFETENSORS_DTYPES[dtype]).newbyteorder("<"))
            if array.dtype.kind == "f":
                array = array.astype(np.float32)
        state[name] = array.reshape(shape)
    return state


def read_safetensors(files: list[Path]) -> dict[str, np.ndarray]:
    state: dict[str, np.ndarray] = {}
    for f in files:
        if not f.is_file():
            raise CLIPLoadError(f"Weight file {f} listed in the index is missing.")
        state.update(_read_one_safetensors(f))
    return state


def load_clip(name_or_dir: str | os.PathLike, revision: str | None = None):
    """``(CLIPConfig, params, tokenizer)`` from a checkpoint directory or a hub id.

    ``params`` is a nested dict of float32 numpy arrays (host memory: the caller decides how to
    place them on devices). ``tokenizer`` is ``None`` when the directory has no tokenizer files.
    """
    directory = resolve_clip_directory(name_or_dir, revision)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise CLIPLoadError(f"{directory} has no {CONFIG_FILE}.")
    try:
        config = CLIPConfig.from_hf_dict(json.loads(config_path.read_text()))
    except (CLIPError, json.JSONDecodeError, TypeError) as e:
        raise CLIPLoadError(f"{config_path} is not a usable CLIP config: {e}") from e
    params = hf_to_flax(read_safetensors(weight_files(directory)), config)
    tokenizer = None
    if has_tokenizer_files(directory):
        tokenizer = load_tokenizer(directory)
    else:
        logging.warning("CLIP checkpoint %s has no tokenizer files; text encoding is unavailable.", directory)
    return config, params, tokenizer


# ---------------------------------------------------------------------------- writing

def save_clip(directory: str | os.PathLike, config: CLIPConfig, params: Mapping[str, Any],
              tokenizer=None, *, preprocess: clip_preprocess.PreprocessConfig | None = None,
              overwrite: bool = False) -> Path:
    """Writes a checkpoint that ``load_clip`` and ``transformers.CLIPModel.from_pretrained`` read.

    ``preprocess`` defaults to OpenAI's normalisation at the model's image size, written as
    preprocessor_config.json so transformers' ``CLIPImageProcessor`` prepares images the same way.
    """
    from safetensors.numpy import save_file

    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise CLIPSaveError(f"{out} exists and is not a directory.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CLIPSaveError(f"{out} is not empty; pass overwrite=True to replace the checkpoint there.")
    try:
        _check_against_config(traverse_util.flatten_dict(dict(params)), config, "parameter tree")
    except CLIPLoadError as e:
        raise CLIPSaveError(str(e)) from e
    state = flax_to_hf(params)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [WEIGHTS_INDEX_FILE, *PICKLED_WEIGHTS, *(p.name for p in out.glob("model-*.safetensors"))]:
        (out / stale).unlink(missing_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(config.to_hf_dict(), indent=2, sort_keys=True) + "\n")
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    preprocess = preprocess or clip_preprocess.PreprocessConfig.for_image_size(config.vision.image_size)
    preprocess.save(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out

