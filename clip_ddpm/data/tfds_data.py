"""tensorflow-datasets sources (tf_flowers, oxford_flowers102, cifar10, ...) as ImageDatasets.

TensorFlow is imported only inside `load`, and hidden from GPUs first, so a JAX machine without
TensorFlow still imports `clip_ddpm.data`, and one with it never loses accelerator memory to it.
Each process reads only its own slice of the split (`tfds.split_for_jax_process` with the index
and count passed in, so no jax.distributed setup is needed) and decodes it once into uint8 arrays
of the same geometry as every other source. Horizontal-flip augmentation, where wanted, is the
trainer's business: the arrays hold the images as they are.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

import numpy as np

from clip_ddpm.data import DatasetError
from clip_ddpm.data.captions import DEFAULT_TEMPLATES, caption, readable_name
from clip_ddpm.data.dataset import ImageDataset
from clip_ddpm.data.process_slice import check_process, process_suffix
from clip_ddpm.data.resize import fit_square

FLOWER_TEMPLATES: tuple[str, ...] = DEFAULT_TEMPLATES + ("a photo of {a}, a type of flower", "{a} in bloom")


@dataclasses.dataclass(frozen=True)
class TfdsSource:
    """How one tfds dataset maps onto ours.

    splits: our split name -> tfds split; names not listed are passed to tfds as they are.
    renames: readable names for raw class names that read badly in a caption ("roses" -> "rose").
    names: class names for when tfds knows only label numbers: some builders (cifar10) read
      their names from the downloaded files, so an unprepared builder reports "0", "1", ...
    """

    splits: Mapping[str, str] = dataclasses.field(default_factory=dict)
    renames: Mapping[str, str] = dataclasses.field(default_factory=dict)
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    names: tuple[str, ...] = ()
    image_key: str = "image"
    label_key: str = "label"


SOURCES: dict[str, TfdsSource] = {
    # tf_flowers ships a single split; a fixed 90/10 cut of it gives a stable test set.
    "tf_flowers": TfdsSource(splits={"train": "train[:90%]", "test": "train[90%:]"},
                             renames={"roses": "rose", "sunflowers": "sunflower", "tulips": "tulip"},
                             templates=FLOWER_TEMPLATES),
    "oxford_flowers102": TfdsSource(templates=FLOWER_TEMPLATES),
    "cifar10": TfdsSource(names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                 "horse", "ship", "truck")),
}


def load(name: str, split: str = "train", image_size: int = 64, process_index: int = 0,
         process_count: int = 1, data_dir: str | None = None, download: bool = True) -> ImageDataset:
    """Loads this process's slice of tfds dataset `name`, split `split`, at `image_size` pixels.

    data_dir: where tfds keeps prepared datasets (the --tfds_data_dir flag); tfds's default if None.
    download: whether a dataset missing from data_dir may be downloaded and prepared.
    Any tfds dataset with an image and a class-label feature works; those in SOURCES get
    their own split mapping, readable names and caption templates.
    """
    check_process(process_index, process_count)
    source = SOURCES.get(name, TfdsSource())
    tfds = _import_tfds()
    builder = _prepared_builder(tfds, name, data_dir, download)
    features = builder.info.features
    for key in (source.image_key, source.label_key):
        if key not in features:
            raise DatasetError(f"tfds dataset {name!r} has no {key!r} feature "
                               f"(features: {', '.join(features)})")
    raw_names = list(features[source.label_key].names)
    if source.names and raw_names == [str(i) for i in range(len(source.names))]:
        raw_names = list(source.names)
    class_names = tuple(readable_name(n, source.renames) for n in raw_names)

    tfds_split = source.splits.get(split, split)
    base_split = re.match(r"[^\[+]*", tfds_split).group(0).strip()
    if builder.info.splits and base_split not in builder.info.splits:  # (unknown until prepared)
        raise DatasetError(f"tfds dataset {name!r} has no split {base_split!r} (it has "
                           f"{', '.join(sorted(builder.info.splits))})")
    own_split = tfds.split_for_jax_process(tfds_split, process_index=process_index,
                                           process_count=process_count)
    ds = builder.as_dataset(split=own_split, shuffle_files=False,
                            read_config=tfds.ReadConfig(add_tfds_id=True, try_autocache=False))
    images, labels, captions = [], [], []
    for example in tfds.as_numpy(ds.prefetch(64)):
        label = int(example[source.label_key])
        images.append(fit_square(example[source.image_key], image_size))
        labels.append(label)
        captions.append(caption(class_names[label], example["tfds_id"].decode("utf-8"), source.templates))
    if not images:
        raise DatasetError(f"tfds dataset {name!r} split {tfds_split!r} has no examples for process "
                           f"{process_index} of {process_count}")
    split_tag = re.sub(r"[^A-Za-z0-9_.+-]+", "_", split).strip("_")
    return ImageDataset(
        images=np.stack(images),
        labels=np.asarray(labels, np.int32),
        class_names=class_names,
        captions=tuple(captions),
        name=f"tfds-{name}-{builder.info.version}-{split_tag}-{image_size}px"
             + process_suffix(process_index, process_count),
    )


def _import_tfds():
    """tensorflow_datasets, after hiding every GPU from TensorFlow (JAX owns the accelerators)."""
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise DatasetError(f"tfds datasets need tensorflow and tensorflow-datasets ({err}); "
                           "pip install tensorflow-cpu tensorflow-datasets") from None
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow already set up its devices; nothing left to hide them from
        pass
    return tfds


def _prepared_builder(tfds, name: str, data_dir: str | None, download: bool):
    """The builder of `name`, downloading and preparing it first when allowed and needed."""
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DatasetError(f"unknown tensorflow-datasets dataset {name!r}") from None
    if builder.is_prepared():
        return builder
    where = data_dir or "the default tfds data_dir"
    advice = (f"run `tfds build {name} --data_dir=DIR` on a connected machine, copy DIR here "
              "and pass --tfds_data_dir=DIR")
    if not download:
        raise DatasetError(f"tfds dataset {name!r} is not prepared in {where}; {advice}")
    try:
        builder.download_and_prepare()
    except Exception as err:  # noqa: BLE001  (network, checksum, disk: all mean the same to the user)
        raise DatasetError(f"tfds dataset {name!r} is not in {where} and could not be downloaded "
                           f"({type(err).__name__}); {advice}") from None
    return builder
