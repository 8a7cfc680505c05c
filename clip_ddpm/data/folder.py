"""A folder of images, one sub-folder per class, as an ImageDataset.

The way to bring one's own pictures: `root/<class name>/<any path>.<any image format>`, the
folder name being the class ("golden_retriever" reads "golden retriever"). An optional
`root/captions.csv` with columns `file,caption` (file relative to root) gives real captions;
other images get captions from the shared class-name templates. Everything is read in sorted
order, so every host sees the same global list and takes its own contiguous slice of it.
Files that are not readable images are skipped and reported in a single warning, because one
stray README or truncated download should not stop a run, yet should not pass unnoticed.
"""
from __future__ import annotations

import csv
import hashlib
import os
import pathlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from absl import logging
from PIL import Image, ImageOps

from clip_ddpm.data import DatasetError
from clip_ddpm.data.captions import caption, readable_name
from clip_ddpm.data.dataset import ImageDataset
from clip_ddpm.data.process_slice import process_bounds, process_suffix
from clip_ddpm.data.resize import fit_square

CAPTIONS_FILE = "captions.csv"


def load(path: str, split: str = "train", image_size: int = 64, process_index: int = 0,
         process_count: int = 1, test_fraction: float = 0.0) -> ImageDataset:
    """Loads this process's slice of split `split` of the image folder at `path`.

    split: "train" is every image unless `test_fraction` > 0; then "test" is that fraction of
      each class's files (evenly spaced in sorted order, so stable across runs; chosen before
      decoding, so a process decodes only its own files) and "train" the rest.
    """
    root = pathlib.Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"image folder {path!r} does not exist or is not a folder")
    if split not in ("train", "test"):
        raise DatasetError(f"image folder splits are 'train' and 'test', not {split!r}")
    if split == "test" and not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"image folder {path!r} has a 'test' split only with 0 < test_fraction < 1")
    class_dirs, files = _listing(root)
    if not files:
        raise DatasetError(f"image folder {path!r} has no files in class sub-folders "
                           "(expected root/<class name>/<image>)")
    test_files = _test_files(files, test_fraction)
    chosen = [f for f in files if (f in test_files) == (split == "test")]
    start, stop = process_bounds(len(chosen), process_index, process_count)
    chosen = chosen[start:stop]

    class_names = tuple(readable_name(d) for d in class_dirs)
    overrides = _read_captions(root)
    unknown = sorted(set(overrides) - set(files))
    if unknown:
        logging.warning("%s: %d caption row(s) name files that are not images of a class folder, e.g. %s",
                        root / CAPTIONS_FILE, len(unknown), ", ".join(unknown[:3]))
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = list(pool.map(lambda rel: _decode(root / rel, image_size), chosen))
    skipped = [rel for rel, image in zip(chosen, decoded) if image is None]
    if skipped:
        logging.warning("image folder %s: skipped %d unreadable or non-image file(s), e.g. %s",
                        path, len(skipped), ", ".join(skipped[:3]))
    kept = [(rel, image) for rel, image in zip(chosen, decoded) if image is not None]
    if not kept:
        where = f" for process {process_index} of {process_count}" if process_count > 1 else ""
        raise DatasetError(f"image folder {path!r} has no readable image in split {split!r}{where}")
    labels = [class_dirs.index(rel.split("/", 1)[0]) for rel, _ in kept]
    name = f"folder-{root.resolve().name}-{_fingerprint(root, files)}-{split}-{image_size}px"
    if test_fraction > 0:
        name += f"-test{test_fraction:g}"
    return ImageDataset(
        images=np.stack([image for _, image in kept]),
        labels=np.asarray(labels, np.int32),
        class_names=class_names,
        captions=tuple(overrides.get(rel) or caption(class_names[label], rel)
                       for (rel, _), label in zip(kept, labels)),
        name=name + process_suffix(process_index, process_count),
    )


def _listing(root: pathlib.Path) -> tuple[list[str], list[str]]:
    """Class folder names and all their files as sorted root-relative POSIX paths; dotfiles ignored."""
    class_dirs, files = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = sorted(p.relative_to(root).as_posix() for p in folder.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(folder).parts))
        if found:
            class_dirs.append(folder.name)
            files.extend(found)
    return class_dirs, files


def _test_files(files: list[str], fraction: float) -> set[str]:
    """`fraction` of each class's files, evenly spaced in sorted order (none when fraction is 0)."""
    chosen: set[str] = set()
    if fraction <= 0:
        return chosen
    position: dict[str, int] = {}
    for rel in files:
        cls = rel.split("/", 1)[0]
        j = position[cls] = position.get(cls, -1) + 1
        if int((j + 1) * fraction) > int(j * fraction):
            chosen.add(rel)
    return chosen


def _decode(file: pathlib.Path, image_size: int) -> np.ndarray | None:
    """The fitted image in `file`, or None when it is not a readable image."""
    try:
        with Image.open(file) as image:
            image.load()
            return fit_square(ImageOps.exif_transpose(image), image_size)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None  # PIL reports unknown formats, truncation and broken chunks this way


def _read_captions(root: pathlib.Path) -> dict[str, str]:
    """root-relative file -> caption from captions.csv, if the folder has one (a UTF-8 byte order
    mark, as spreadsheet programs write, is accepted)."""
    csv_path = root / CAPTIONS_FILE
    if not csv_path.is_file():
        return {}
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if not {"file", "caption"} <= set(reader.fieldnames or ()):
                raise DatasetError(f"{csv_path} needs a header row with columns 'file' and 'caption' (it has "
                                   f"{', '.join(map(repr, reader.fieldnames or ())) or 'none'})")
            return {pathlib.PurePosixPath(row["file"].strip()).as_posix(): row["caption"].strip()
                    for row in reader if row["file"] and row["caption"]}
    except UnicodeDecodeError as error:
        raise DatasetError(f"{csv_path} is not UTF-8 text ({error.reason} at byte {error.start})") from None


def _fingerprint(root: pathlib.Path, files: list[str]) -> str:
    """Short digest of the file list, sizes and captions, so caches tell folder versions apart."""
    digest = hashlib.sha1()
    for rel in files:
        digest.update(f"{rel}\t{(root / rel).stat().st_size}\n".encode("utf-8"))
    captions_path = root / CAPTIONS_FILE
    if captions_path.is_file():
        digest.update(captions_path.read_bytes())
    return digest.hexdigest()[:8]
