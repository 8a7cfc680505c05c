"""The CLIP-embedding cache of a dataset: images (or captions) embedded once, kept on disk.

CLIP-conditioned training needs one embedding per training image (--condition=clip_image) or
per caption (--condition=clip_text). Computing them takes far longer than reading them, and
they depend only on the data and the CLIP weights, so they are computed once, batched, jitted
and sharded over the devices, and stored as

    <root>/clip_cache/<dataset name>-<CLIP fingerprint[:16]>/<kind>/
        manifest.json        what the embeddings are of, and which shards are finished
        rows.npy             a digest of each embedded image (or caption), in row order
        shard_00000.npy      float32 [<= shard_size, D], L2-normalised rows
        ...

<root> is --clip_cache_dir, else $CLIP_DDPM_CACHE, else ~/.cache/clip_ddpm. Embeddings are
stored L2-normalised in float32: CLIP compares by cosine, so their length carries no meaning,
and unit rows are what the U-Net is conditioned on. Each shard is written atomically and then
recorded in the manifest, so an interrupted build keeps its finished shards and a restarted one
continues from the first missing shard, computing each shard exactly as a straight run would.
An existing manifest that describes other data, another model or other preprocessing is
refused rather than silently mixed. The CLIP fingerprint covers its weights, config and compute
dtype (`encoder.clip_fingerprint`).

A cache is of a whole split, as `clip_ddpm.embed` builds it. A process of a multi-host run holds
only its slice of the split: it takes its rows from the whole split's cache when there is one
(found by the digests in rows.npy), and otherwise builds a cache of its own slice.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging

from clip_ddpm.data.dataset import ImageDataset
from clip_ddpm.data.process_slice import process_suffix
from clip_ddpm.errors import UserError

CACHE_ENV = "CLIP_DDPM_CACHE"
CACHE_FOLDER = "clip_cache"
MANIFEST_FILE = "manifest.json"
KINDS = ("image", "text")
CONDITION_KINDS = {"clip_image": "image", "clip_text": "text"}
DEFAULT_SHARD_SIZE = 1024
FORMAT_VERSION = 1
# Manifest fields that say what the embeddings are; any difference means another cache.
IDENTITY_FIELDS = ("format", "dataset", "split", "count", "data_sha256", "kind", "weights_hash",
                   "clip_config_sha256", "compute_dtype", "preprocessing", "embedding_dim", "dtype",
                   "normalization")
# The identity fields that say which data a cache holds (the others say how it was embedded).
DATA_FIELDS = ("dataset", "split", "count", "data_sha256")
ROWS_FILE = "rows.npy"
# Parts of a tokenizer.json that decide the ids; the rest (padding, truncation) is settings the
# tokenizer rewrites whenever it is called with other arguments.
TOKENIZER_IDENTITY = ("model", "normalizer", "pre_tokenizer", "post_processor", "added_tokens")


class EmbeddingCacheError(UserError, RuntimeError):
    """An embedding cache that cannot be used for the data and model asked for."""


def cache_root(cache_dir: str | os.PathLike = "") -> Path:
    """--clip_cache_dir if given, else $CLIP_DDPM_CACHE, else ~/.cache/clip_ddpm."""
    root = str(cache_dir) or os.environ.get(CACHE_ENV, "") or os.path.join("~", ".cache", "clip_ddpm")
    return Path(root).expanduser()


def cache_directory(root: str | os.PathLike, dataset_name: str, fingerprint: str, kind: str) -> Path:
    """Where the `kind` embeddings of one dataset by one CLIP (its fingerprint) live under a cache root."""
    if kind not in KINDS:
        raise EmbeddingCacheError(f"unknown embedding kind {kind!r}; expected one of {', '.join(KINDS)}")
    safe = re.sub(r"[^A-Za-z0-9_.+-]+", "_", dataset_name).strip("_") or "dataset"
    return Path(root) / CACHE_FOLDER / f"{safe}-{fingerprint[:16]}" / kind


def as_contexts(vectors: np.ndarray) -> np.ndarray:
    """float32 rows of unit length: the form of every CLIP context the U-Net sees.

    Training contexts (from the cache) and sampling prompts both pass through here, so a prompt
    is normalised exactly like the embeddings the model was trained on.
    """
    vectors = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    if vectors.ndim != 2 or not np.all(np.isfinite(vectors)) or np.any(norms == 0):
        raise EmbeddingCacheError(f"CLIP embeddings must be finite, non-zero rows [N, D]; got shape "
                                  f"{vectors.shape}")
    return (vectors / norms).astype(np.float32)


def _sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8")).hexdigest()


def data_fingerprint(dataset: ImageDataset, kind: str) -> str:
    """sha256 of exactly what gets embedded: the uint8 images, or the captions."""
    if kind == "text":
        return _sha256_json(list(dataset.captions))
    h = hashlib.sha256(str(dataset.images.shape).encode())
    h.update(np.ascontiguousarray(dataset.images).tobytes())
    return h.hexdigest()


def row_digests(dataset: ImageDataset, kind: str) -> np.ndarray:
    """A sha1 digest of each row that gets embedded (image bytes, or caption), [N] bytes."""
    if kind == "text":
        rows = [caption.encode("utf-8") for caption in dataset.captions]
    else:
        rows = [np.ascontiguousarray(image).tobytes() for image in dataset.images]
    return np.asarray([hashlib.sha1(row).digest() for row in rows], dtype="S20")


def tokenizer_sha256(tokenizer) -> str:
    """sha256 of what decides a tokenizer's ids: its model (vocabulary and merges), normaliser,
    pre-tokeniser, post-processor and added tokens. Not the whole serialised state: that also
    holds the padding and truncation last asked for, which change as soon as it is used."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return hashlib.sha256(repr(getattr(tokenizer, "vocab", None)).encode("utf-8")).hexdigest()
    state = json.loads(backend.to_str())
    return _sha256_json({part: state.get(part) for part in TOKENIZER_IDENTITY})


def preprocessing_of(encoder, kind: str) -> dict[str, Any]:
    """What turns the data into model input: image preprocessing, or context length + tokenizer."""
    if kind == "image":
        return json.loads(json.dumps(dataclasses.asdict(encoder.preprocess)))
    return {"context_length": int(encoder.context_length), "tokenizer_sha256": tokenizer_sha256(encoder.tokenizer)}


def new_manifest(dataset: ImageDataset, encoder, kind: str, split: str, shard_size: int) -> dict[str, Any]:
    """The manifest of a cache not yet started."""
    count = len(dataset)
    return {
        "format": FORMAT_VERSION, "dataset": dataset.name, "split": split, "count": count,
        "data_sha256": data_fingerprint(dataset, kind), "kind": kind,
        "clip_model": encoder.name, "weights_hash": encoder.weights_hash,
        "clip_config_sha256": _sha256_json(encoder.config.to_hf_dict()), "compute_dtype": encoder.compute_dtype,
        "preprocessing": preprocessing_of(encoder, kind), "embedding_dim": int(encoder.embedding_dim),
        "dtype": "float32", "normalization": "l2",
        "shard_size": shard_size, "num_shards": -(-count // shard_size), "finished_shards": [],
    }


def manifest_mismatches(existing: dict[str, Any], wanted: dict[str, Any],
                        fields: tuple[str, ...] = IDENTITY_FIELDS) -> list[str]:
    """'field: cached X, wanted Y' for every identity field (of `fields`) that differs."""
    return [f"{key}: cached {existing.get(key)!r}, wanted {wanted[key]!r}"
            for key in fields if existing.get(key) != wanted[key]]


def read_manifest(directory: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise EmbeddingCacheError(f"embedding cache manifest {path} is unreadable ({error}); "
                                  "delete that folder to rebuild it") from None
    required = ("count", "embedding_dim", "shard_size", "num_shards", "finished_shards")
    if not isinstance(manifest, dict) or not all(k in manifest for k in required):
        raise EmbeddingCacheError(f"{path} is not an embedding cache manifest; delete that folder to rebuild it")
    return manifest


def _write_atomically(path: Path, write) -> None:
    """Writes through a temporary file and a rename, so a crash never leaves half a file (and
    two processes filling the same cache never write into one temporary file)."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as handle:
            write(handle)
        os.replace(temporary, path)
    except OSError as error:
        raise EmbeddingCacheError(f"cannot write the embedding cache in {path.parent}: {error}") from None


def _store_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    text = (json.dumps(manifest, indent=1) + "\n").encode("utf-8")
    _write_atomically(directory / MANIFEST_FILE, lambda handle: handle.write(text))


def shard_path(directory: str | os.PathLike, index: int) -> Path:
    return Path(directory) / f"shard_{index:05d}.npy"


def _shard_rows(manifest: dict[str, Any], index: int) -> tuple[int, int]:
    start = index * manifest["shard_size"]
    return start, min(manifest["count"], start + manifest["shard_size"])


def _read_shard(directory: Path, manifest: dict[str, Any], index: int) -> np.ndarray | None:
    """The finished shard `index`, or None when its file is missing or not what it should be."""
    start, stop = _shard_rows(manifest, index)
    try:
        shard = np.load(shard_path(directory, index), allow_pickle=False)
    except (OSError, ValueError):
        return None
    if shard.dtype != np.float32 or shard.shape != (stop - start, manifest["embedding_dim"]):
        return None
    return shard


def load_embeddings(directory: str | os.PathLike) -> np.ndarray:
    """The embeddings of a finished cache, float32 [count, D] (raises if it is unfinished)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        raise EmbeddingCacheError(f"no embedding cache in {directory} ({MANIFEST_FILE} is missing)")
    shards = [_read_shard(directory, manifest, i) for i in range(manifest["num_shards"])]
    missing = [i for i, shard in enumerate(shards) if shard is None]
    if missing:
        raise EmbeddingCacheError(f"embedding cache {directory} is unfinished or damaged (shards "
                                  f"{missing[:5]} missing); run clip_ddpm.embed again to complete it")
    if not shards:
        return np.zeros((0, manifest["embedding_dim"]), np.float32)
    return np.concatenate(shards)


def build_embeddings(dataset: ImageDataset, encoder, kind: str, directory: str | os.PathLike,
                     split: str = "train", shard_size: int = DEFAULT_SHARD_SIZE) -> np.ndarray:
    """Embeds `dataset` (its images or captions) into `directory`, or completes what is there.

    encoder: a CLIPEncoder (its batches split over its devices). Shards listed as finished
    in an existing manifest are kept (and the manifest's shard size with them); an existing
    manifest for other data, weights or preprocessing raises EmbeddingCacheError.
    Returns the whole float32 [N, D] array of unit-norm rows.
    """
    if kind not in KINDS:
        raise EmbeddingCacheError(f"unknown embedding kind {kind!r}; expected one of {', '.join(KINDS)}")
    if shard_size < 1:
        raise EmbeddingCacheError(f"shard size must be positive, got {shard_size}")
    if kind == "text" and encoder.tokenizer is None:
        raise EmbeddingCacheError(f"CLIP model {encoder.name!r} has no tokenizer, so captions cannot be embedded")
    directory = Path(directory)
    wanted = new_manifest(dataset, encoder, kind, split, shard_size)
    manifest = read_manifest(directory)
    if manifest is not None:
        conflicts = manifest_mismatches(manifest, wanted)
        if conflicts:
            raise EmbeddingCacheError(
                f"embedding cache {directory} holds other embeddings ({'; '.join(conflicts[:3])}); "
                "delete that folder or choose another --clip_cache_dir")
    else:  # a new cache: its manifest comes first, so every shard on disk is accounted for
        manifest = wanted
        _store_manifest(directory, manifest)
    if not (directory / ROWS_FILE).is_file():
        digests = row_digests(dataset, kind)
        _write_atomically(directory / ROWS_FILE, lambda handle: np.save(handle, digests))

    encode = encoder.encode_images if kind == "image" else encoder.encode_texts
    items = dataset.images if kind == "image" else list(dataset.captions)
    shards = []
    for index in range(manifest["num_shards"]):
        shard = _read_shard(directory, manifest, index) if index in manifest["finished_shards"] else None
        if shard is None:
            start, stop = _shard_rows(manifest, index)
            shard = np.asarray(encode(items[start:stop]), np.float32)
            if not np.all(np.isfinite(shard)):
                raise EmbeddingCacheError(f"CLIP gave non-finite {kind} embeddings for rows {start}:{stop}")
            _write_atomically(shard_path(directory, index), lambda handle: np.save(handle, shard))
            manifest["finished_shards"] = sorted(set(manifest["finished_shards"]) | {index})
            _store_manifest(directory, manifest)
            logging.info("CLIP %s embeddings of %s: shard %d/%d written", kind, dataset.name, index + 1,
                         manifest["num_shards"])
        shards.append(shard)
    if not shards:
        return np.zeros((0, manifest["embedding_dim"]), np.float32)
    return np.concatenate(shards)


def rows_from_whole_split(dataset: ImageDataset, encoder, kind: str, directory: Path,
                          split: str = "train") -> np.ndarray | None:
    """The embeddings of `dataset`'s rows (a process's slice of a split) taken from the finished
    cache of the whole split in `directory`, or None when that cache is missing, unfinished,
    made another way, or lacks some of the rows."""
    manifest = read_manifest(directory)
    if manifest is None or not (directory / ROWS_FILE).is_file():
        return None
    wanted = new_manifest(dataset, encoder, kind, split, manifest["shard_size"])
    how = tuple(field for field in IDENTITY_FIELDS if field not in DATA_FIELDS)
    mismatches = manifest_mismatches(manifest, wanted, how)
    if mismatches or sorted(manifest["finished_shards"]) != list(range(manifest["num_shards"])):
        logging.info("the whole-split cache %s does not serve this slice (%s)", directory,
                     "; ".join(mismatches[:2]) or "unfinished")
        return None
    try:
        index = {digest: row for row, digest in enumerate(np.load(directory / ROWS_FILE, allow_pickle=False))}
    except (OSError, ValueError):
        return None
    rows = [index.get(digest) for digest in row_digests(dataset, kind)]
    if any(row is None for row in rows):
        logging.info("the whole-split cache %s lacks some rows of %s", directory, dataset.name)
        return None
    return load_embeddings(directory)[np.asarray(rows, np.int64)]


def cached_embeddings(dataset: ImageDataset, encoder, kind: str, cache_dir: str | os.PathLike = "",
                      split: str = "train", shard_size: int = DEFAULT_SHARD_SIZE) -> tuple[np.ndarray, Path]:
    """(embeddings [N, D], their folder): read from the default cache location, built if missing.

    A process's slice of a split (several processes) is read from the whole split's cache when
    one is there, the cache `clip_ddpm.embed` builds; else its own slice's cache is built.
    """
    root = cache_root(cache_dir)
    whole_name = dataset.name.removesuffix(process_suffix(jax.process_index(), jax.process_count()))
    if whole_name != dataset.name:
        directory = cache_directory(root, whole_name, encoder.fingerprint, kind)
        vectors = rows_from_whole_split(dataset, encoder, kind, directory, split)
        if vectors is not None:
            return vectors, directory
    directory = cache_directory(root, dataset.name, encoder.fingerprint, kind)
    return build_embeddings(dataset, encoder, kind, directory, split, shard_size), directory


def clip_context_vectors(config, dataset: ImageDataset, split: str = "train",
                         trained_clip: tuple[str, str] = ("", "")):
    """The U-Net contexts of --condition=clip_image (image embeddings) or clip_text (caption
    embeddings) for `dataset`, float32 [N, projection_dim], from the cache (built if missing),
    with the CLIPEncoder that made them (its weights_hash and fingerprint identify it).

    trained_clip: the (weights hash, fingerprint) of the CLIP a resumed run was trained with;
    another CLIP at --clip_model is refused before any embedding is computed.
    With --clip_image_size, image embeddings are of the same examples loaded at that size.
    """
    from clip_ddpm.clip.encoder import CLIPEncoder
    from clip_ddpm.training.datasets import same_examples_at_size
    from clip_ddpm.training.workdir import check_same_clip

    kind = CONDITION_KINDS.get(config.condition)
    if kind is None:
        raise EmbeddingCacheError(f"--condition={config.condition} has no CLIP embeddings")
    encoder = CLIPEncoder.from_pretrained(config.clip_model, revision=config.clip_revision)
    check_same_clip(trained_clip, config.clip_model, encoder.weights_hash, encoder.fingerprint)
    if kind == "image" and config.clip_image_size:
        dataset = same_examples_at_size(config, dataset, config.clip_image_size, split)
    vectors, directory = cached_embeddings(dataset, encoder, kind, config.clip_cache_dir, split)
    logging.info("CLIP %s contexts of %s: %s from %s", kind, dataset.name, vectors.shape, directory)
    return as_contexts(vectors), encoder


@dataclasses.dataclass(frozen=True)
class EmbedRequest:
    clip_model: str
    clip_revision: str = ""
    dataset: str = "shapes"
    split: str = "train"
    image_size: int = 32
    dataset_size: int = 0
    seed: int = 0
    holdout_pairs: tuple[str, ...] = ()
    tfds_data_dir: str = ""
    cache_dir: str = ""
    kinds: tuple[str, ...] = ("image",)
    shard_size: int = 1024
    batch_size: int = 256


def embed_dataset(request: EmbedRequest) -> dict[str, str]:
    """Builds (or completes) the cache of each requested kind; returns {kind: cache folder}."""
    from clip_ddpm.clip.encoder import CLIPEncoder
    from clip_ddpm.training.datasets import load_split
    from clip_ddpm.training.run_config import RunConfig

    if not request.clip_model:
        raise EmbeddingCacheError("--clip_model is required")
    unknown = [k for k in request.kinds if k not in KINDS]
    if unknown or not request.kinds:
        raise EmbeddingCacheError(f"--kind must list some of {', '.join(KINDS)}, got {','.join(request.kinds) or 'nothing'}")
    for name in ("shard_size", "batch_size"):
        if getattr(request, name) < 1:
            raise EmbeddingCacheError(f"--{name} must be positive, got {getattr(request, name)}")
    # The training flags that choose the data, so the cache is keyed exactly as training keys it.
    data_config = RunConfig(dataset=request.dataset, image_size=request.image_size, seed=request.seed,
                            holdout_pairs=tuple(request.holdout_pairs), tfds_data_dir=request.tfds_data_dir)
    dataset = load_split(data_config, request.split, num_images=request.dataset_size)
    encoder = CLIPEncoder.from_pretrained(request.clip_model, revision=request.clip_revision,
                                          batch_size=request.batch_size)
    folders = {}
    for kind in dict.fromkeys(request.kinds):
        vectors, folder = cached_embeddings(dataset, encoder, kind, request.cache_dir, request.split,
                                            request.shard_size)
        print(f"{kind} embeddings of {dataset.name}: float32 {vectors.shape}, L2-normalised, in {folder}")
        folders[kind] = str(folder)
    return folders
