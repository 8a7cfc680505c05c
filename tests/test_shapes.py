"""The procedural shapes dataset: determinism, splits, captions and that shapes really render."""
import numpy as np
import pytest

from clip_ddpm.data import DatasetError, load_dataset, shapes


@pytest.fixture(scope="module")
def train():
    return shapes.load()


@pytest.fixture(scope="module")
def test_split():
    return shapes.load(split="test")


def _colour_mask(ds, tolerance=45.0):
    """Pixels within `tolerance` (RGB distance) of each image's nominal shape colour."""
    rgb = np.array([shapes.COLOUR_RGB[c] for c in shapes.COLOURS], np.float32)[ds.attributes["colour"]]
    return np.linalg.norm(ds.images.astype(np.float32) - rgb[:, None, None, :], axis=-1) < tolerance


def test_same_seed_same_data_other_seed_other_data():
    a = shapes.load(split="test", num_images=64, seed=3)
    b = shapes.load(split="test", num_images=64, seed=3)
    c = shapes.load(split="test", num_images=64, seed=4)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.captions == b.captions and a.name == b.name
    assert not np.array_equal(a.images, c.images)
    assert a.name != c.name


def test_shapes_dtype_range_and_size_option(train):
    assert train.images.shape == (10000, 32, 32, 3) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int32 and train.labels.min() >= 0 and train.labels.max() < 36
    assert train.images.min() < 40 and train.images.max() > 220  # dark and light backgrounds
    assert train.name == "shapes-train-32px-seed0-n10000"
    big = shapes.load(split="test", image_size=48, num_images=8)
    assert big.images.shape == (8, 48, 48, 3) and big.image_size == 48
    assert len(train.class_names) == 36 and "red circle" in train.class_names


def test_every_class_and_size_in_default_train(train):
    counts = np.bincount(train.labels, minlength=36)
    assert counts.min() > 0 and counts.max() - counts.min() <= 1
    for k in range(36):
        sizes = train.attributes["size"][train.labels == k]
        assert set(sizes.tolist()) == {0, 1}
    shape_of = np.array([shapes.SHAPES.index(n.split()[1]) for n in train.class_names])
    np.testing.assert_array_equal(shape_of[train.labels], train.attributes["shape"])


def test_captions_name_colour_and_shape(train):
    for i in range(0, len(train), 7):
        text = train.captions[i]
        colour = shapes.COLOURS[train.attributes["colour"][i]]
        shape = shapes.SHAPES[train.attributes["shape"][i]]
        assert colour in text, text
        assert any(word in text for word in shapes.SHAPE_SYNONYMS[shape]), text
        other_colours = [c for c in shapes.COLOURS if c != colour]
        assert not any(c in text.split() for c in other_colours), text
    assert len(set(train.captions)) > 500  # templates and synonyms vary the wording
    assert any(c.startswith("an orange") for c in train.captions)


def test_holdout_pairs():
    pairs = ("red circle", "blue_square")
    held = {shapes.CLASS_NAMES.index("red circle"), shapes.CLASS_NAMES.index("blue square")}
    train = shapes.load(num_images=720, holdout_pairs=pairs)
    test = shapes.load(split="test", num_images=200, holdout_pairs="red circle, blue square")
    holdout = shapes.load(split="holdout", num_images=100, holdout_pairs=pairs)
    validation = shapes.load(split="validation", num_images=200, holdout_pairs=pairs)
    assert not held & set(train.labels.tolist()) and not held & set(test.labels.tolist())
    assert not held & set(validation.labels.tolist())
    # Fresh renders: no validation image is a training or test image.
    seen = {image.tobytes() for image in np.concatenate([train.images, test.images])}
    assert not any(image.tobytes() in seen for image in validation.images)
    assert len(set(train.labels.tolist())) == 34
    assert set(holdout.labels.tolist()) == held
    assert train.name.endswith("-holdout-red_circle+blue_square")  # label order, not given order
    assert shapes.load(num_images=720, holdout_pairs=pairs[::-1]).name == train.name
    assert holdout.class_names == train.class_names  # labels mean the same in every split
    with pytest.raises(DatasetError, match="holdout_pairs"):
        shapes.load(split="holdout")
    with pytest.raises(DatasetError, match="unknown shapes class"):
        shapes.load(holdout_pairs=("pink circle",))


def test_process_slices_are_disjoint_and_cover():
    whole = shapes.load(split="test", num_images=101)
    parts = [shapes.load(split="test", num_images=101, process_index=i, process_count=3) for i in range(3)]
    assert [len(p) for p in parts] == [34, 34, 33]
    np.testing.assert_array_equal(np.concatenate([p.images for p in parts]), whole.images)
    assert sum((p.captions for p in parts), ()) == whole.captions
    np.testing.assert_array_equal(np.concatenate([p.labels for p in parts]), whole.labels)
    assert len({p.name for p in parts}) == 3
    with pytest.raises(ValueError):
        shapes.load(split="test", num_images=10, process_index=3, process_count=3)


def test_train_and_test_share_no_image(train, test_split):
    train_keys = {img.tobytes() for img in train.images}
    assert len(train_keys) == len(train)
    assert not any(img.tobytes() in train_keys for img in test_split.images)


def test_shape_is_drawn_in_its_colour_at_its_size(test_split):
    mask = _colour_mask(test_split)
    area = mask.sum(axis=(1, 2))
    assert area.min() >= 20  # every image shows its shape in the named colour
    small = area[test_split.attributes["size"] == 0].mean()
    large = area[test_split.attributes["size"] == 1].mean()
    assert large > 2.5 * small
    # Background never takes the shape colour: the coloured pixels form one compact blob.
    border = np.concatenate([mask[:, 0], mask[:, -1], mask[:, :, 0], mask[:, :, -1]], axis=1)
    assert border.sum(axis=1).max() <= 2


def test_shapes_differ_in_outline(test_split):
    """Circles, squares and hexagons fill their bounding box; triangles, stars and crosses don't."""
    mask = _colour_mask(test_split)
    fill = []
    for m in mask:
        rows, cols = np.nonzero(m)
        fill.append(m.sum() / ((np.ptp(rows) + 1) * (np.ptp(cols) + 1)))
    fill = np.array(fill)
    compact = np.isin(test_split.attributes["shape"],
                      [shapes.SHAPES.index(s) for s in ("circle", "square", "hexagon")])
    assert np.mean((fill > 0.6) == compact) > 0.97
    star = fill[test_split.attributes["shape"] == shapes.SHAPES.index("star")].mean()
    circle = fill[test_split.attributes["shape"] == shapes.SHAPES.index("circle")].mean()
    assert star < 0.5 < 0.7 < circle


def test_class_prompts_and_dispatch():
    prompts = shapes.class_prompts()
    assert len(prompts) == 36 and prompts[0] == "a red circle"
    assert prompts[shapes.CLASS_NAMES.index("orange star")] == "an orange star"
    assert shapes.class_prompts("a photo of a {colour} {shape}")[1] == "a photo of a green circle"
    ds = load_dataset("shapes", "holdout", image_size=32, seed=1, num_images=10, holdout_pairs="green star")
    assert ds.name == "shapes-holdout-32px-seed1-n10-holdout-green_star"
    assert set(ds.labels.tolist()) == {shapes.class_index("green star")}
    with pytest.raises(DatasetError):
        shapes.load(split="dev")
    with pytest.raises(DatasetError):
        shapes.load(image_size=8)
