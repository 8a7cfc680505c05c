"""Image sources behind one flag: --dataset=shapes | tfds:NAME | folder:PATH."""
from __future__ import annotations

from clip_ddpm.data.dataset import ImageDataset
from clip_ddpm.errors import UserError


class DatasetError(UserError, ValueError):
    """A dataset spec or source that cannot be used; the message is shown to the user as is."""


def load_dataset(spec: str, split: str, image_size: int, seed: int = 0,
                 process_index: int = 0, process_count: int = 1, **options) -> ImageDataset:
    """Loads `spec` ("shapes", "tfds:NAME", "folder:PATH") as an in-memory ImageDataset.

    With several processes each one loads only its slice (process_index of process_count).
    Heavy libraries (TensorFlow) are imported only by the source that needs them.
    """
    if spec == "shapes":
        from clip_ddpm.data import shapes
        return shapes.load(split=split, image_size=image_size, seed=seed,
                           process_index=process_index, process_count=process_count, **options)
    if spec.startswith("tfds:"):
        from clip_ddpm.data import tfds_data
        return tfds_data.load(spec[len("tfds:"):], split=split, image_size=image_size,
                              process_index=process_index, process_count=process_count, **options)
    if spec.startswith("folder:"):
        from clip_ddpm.data import folder
        return folder.load(spec[len("folder:"):], split=split, image_size=image_size,
                           process_index=process_index, process_count=process_count, **options)
    raise DatasetError(f"unknown dataset {spec!r}: expected shapes, tfds:NAME or folder:PATH")
