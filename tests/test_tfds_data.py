"""tensorflow-datasets sources, run on tfds mock data (nothing is downloaded)."""
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from clip_ddpm.data import DatasetError, load_dataset, tfds_data

EXPECTED = {
    "tf_flowers": ({"daisy", "dandelion", "rose", "sunflower", "tulip"}, 5),
    "oxford_flowers102": ({"pink primrose", "sunflower", "english marigold"}, 102),
    "cifar10": ({"airplane", "automobile", "cat", "truck"}, 10),
}
# Examples per tfds split in the indexed fake below.
FAKE_SPLIT_SIZES = {"train": 23, "test": 9, "validation": 5}


def _indexed_as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
    """A fake `_as_dataset` that honours sub-splits: example i of a split shows pixel value i.

    tfds's own mock returns the same examples for every split, which cannot show whether two
    processes read disjoint slices; this one resolves the requested (sub-)split to absolute
    indices the way a prepared dataset would.
    """
    import tensorflow as tf  # here, not at collection: seconds of every test worker's start

    del decoders, shuffle_files
    infos = tfds.core.SplitDict([
        tfds.core.SplitInfo(name=name, shard_lengths=[n], num_bytes=0, filename_template=None)
        for name, n in FAKE_SPLIT_SIZES.items()])
    rows = [(inst.splitname, i) for inst in tfds.core.ReadInstruction.from_spec(split).to_absolute(infos)
            for i in range(inst.from_ or 0, FAKE_SPLIT_SIZES[inst.splitname] if inst.to is None else inst.to)]
    num_classes = self.info.features["label"].num_classes
    examples = {
        "image": [np.full((10 + i % 3, 14, 3), i, np.uint8) for _, i in rows],
        "label": np.array([i % num_classes for _, i in rows], np.int64),
    }
    if read_config is not None and read_config.add_tfds_id:
        examples["tfds_id"] = np.array([f"{self.name}-{s}.tfrecord-00000-of-00001__{i}" for s, i in rows])
    # Images of unequal height, like real photos, so they go through a generator.
    keys = list(examples)
    return tf.data.Dataset.from_generator(
        lambda: (dict(zip(keys, values)) for values in zip(*(examples[k] for k in keys))),
        output_signature={
            "image": tf.TensorSpec((None, 14, 3), tf.uint8), "label": tf.TensorSpec((), tf.int64),
            **({"tfds_id": tf.TensorSpec((), tf.string)} if "tfds_id" in examples else {})})


def _indices(ds):
    """The fake example index of every image (its constant pixel value)."""
    assert (ds.images == ds.images[:, :1, :1, :1]).all()
    return ds.images[:, 0, 0, 0].astype(int).tolist()


def test_importing_the_package_does_not_import_tensorflow():
    code = ("import sys, clip_ddpm.data, clip_ddpm.data.tfds_data, clip_ddpm.data.folder, "
            "clip_ddpm.data.shapes; "
            "assert 'tensorflow' not in sys.modules; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_source_on_mock_data(name):
    some_names, num_classes = EXPECTED[name]
    with tfds.testing.mock_data(num_examples=6):
        ds = tfds_data.load(name, split="train", image_size=20)
    assert ds.images.shape == (6, 20, 20, 3) and ds.images.dtype == np.uint8
    assert ds.images.max() > ds.images.min()  # decoded pictures, not a constant fill
    assert ds.labels.dtype == np.int32 and 0 <= ds.labels.min() and ds.labels.max() < num_classes
    assert len(ds.class_names) == num_classes and some_names <= set(ds.class_names)
    assert all("_" not in n for n in ds.class_names)
    for label, text in zip(ds.labels, ds.captions):
        assert ds.class_names[label] in text, text
    assert ds.name.startswith(f"tfds-{name}-") and ds.name.endswith("-train-20px")


def test_captions_vary_and_use_articles():
    with tfds.testing.mock_data(num_examples=40):
        ds = tfds_data.load("tf_flowers", split="test", image_size=16)
    assert len({c.replace(ds.class_names[l], "X") for c, l in zip(ds.captions, ds.labels)}) >= 4
    assert not any(" a a" in c or "a a" == c[:3] for c in ds.captions)


@pytest.mark.parametrize("name,split,expected", [
    ("tf_flowers", "train", range(0, 21)),  # train[:90%] of 23 examples
    ("tf_flowers", "test", range(21, 23)),
    ("cifar10", "test", range(0, 9)),
    ("oxford_flowers102", "validation", range(0, 5)),
])
def test_two_processes_read_disjoint_slices_that_cover_the_split(name, split, expected):
    with tfds.testing.mock_data(as_dataset_fn=_indexed_as_dataset):
        whole = tfds_data.load(name, split=split, image_size=8)
        parts = [tfds_data.load(name, split=split, image_size=8, process_index=i, process_count=2)
                 for i in range(2)]
    first, second = (_indices(p) for p in parts)
    assert not set(first) & set(second)
    assert first + second == _indices(whole) == list(expected)
    assert sum((p.captions for p in parts), ()) == whole.captions  # captions don't depend on slicing
    assert parts[0].name.endswith("-proc0of2") and parts[1].name != parts[0].name


def test_missing_dataset_that_cannot_download_is_a_clear_error(tmp_path, monkeypatch):
    def offline(self, *args, **kwargs):
        raise ConnectionError("Failed to resolve 'download.tensorflow.org'")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(DatasetError) as error:
        tfds_data.load("tf_flowers", data_dir=str(tmp_path))
    message = str(error.value)
    assert "\n" not in message and "'tf_flowers'" in message and "could not be downloaded" in message
    assert "--tfds_data_dir" in message and "tfds build tf_flowers" in message
    assert error.value.__cause__ is None and error.value.__suppress_context__
    with pytest.raises(DatasetError, match="not prepared"):
        tfds_data.load("cifar10", data_dir=str(tmp_path), download=False)


def test_unknown_dataset_and_dispatch():
    with pytest.raises(DatasetError, match="unknown tensorflow-datasets dataset"):
        tfds_data.load("no_such_dataset_xyz")
    with tfds.testing.mock_data(num_examples=3):
        ds = load_dataset("tfds:cifar10", "test", image_size=12, data_dir="/nonexistent")
    assert ds.images.shape == (3, 12, 12, 3) and ds.name.startswith("tfds-cifar10-")
