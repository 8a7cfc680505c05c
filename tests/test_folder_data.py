"""Image-folder source on a generated folder of PNG and JPEG files, with broken files among them."""
import logging

import numpy as np
import pytest
from PIL import Image

from clip_ddpm.data import DatasetError, folder, load_dataset

RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 200, 30)


def _picture(colour, width=40, height=24):
    """`colour` in the central square, blue margins left and right (lost to the centre crop)."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:] = BLUE
    margin = (width - height) // 2
    pixels[:, margin:width - margin] = colour
    return Image.fromarray(pixels)


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "pictures"
    (root / "red_apple").mkdir(parents=True)
    (root / "banana" / "more").mkdir(parents=True)
    for i in range(4):
        _picture(RED).save(root / "red_apple" / f"apple{i}.png")
    for i in range(3):
        _picture(GREEN).save(root / "banana" / f"b{i}.jpg", quality=95)
    rgba = Image.new("RGBA", (30, 30), (0, 0, 0, 0))  # fully transparent: should come out white
    rgba.save(root / "banana" / "more" / "clear.png")
    (root / "banana" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "red_apple" / "notes.txt").write_text("picked in autumn")
    (root / "red_apple" / ".DS_Store").write_bytes(b"\x00\x01")  # hidden: ignored, not counted
    (root / "captions.csv").write_text("file,caption\nbanana/b1.jpg,a ripe banana on a wooden table\n")
    return root


def test_images_labels_and_geometry(image_root, caplog):
    with caplog.at_level(logging.WARNING):
        ds = folder.load(str(image_root), image_size=16)
    assert ds.class_names == ("banana", "red apple")
    assert ds.images.shape == (8, 16, 16, 3) and ds.images.dtype == np.uint8
    assert ds.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    centre = ds.images[:, 4:12, 4:12].astype(int)
    for image, label in zip(centre[:3], ds.labels[:3]):
        assert np.abs(image - GREEN).max() < 20  # jpeg, centre crop removed the blue margins
    assert (ds.images[3] == 255).all()  # transparent png composited on white
    assert (np.abs(centre[4:] - RED).max(axis=-1) < 3).all()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "skipped" in r.getMessage()]
    assert len(warnings) == 1
    assert "skipped 2 " in warnings[0].getMessage()
    assert "broken.jpg" in warnings[0].getMessage() and "notes.txt" in warnings[0].getMessage()


def test_captions_file_overrides_templates(image_root):
    ds = folder.load(str(image_root), image_size=8)
    by_file = dict(zip(["banana/b0.jpg", "banana/b1.jpg", "banana/b2.jpg", "banana/more/clear.png"],
                       ds.captions[:4]))
    assert by_file["banana/b1.jpg"] == "a ripe banana on a wooden table"
    for label, text in zip(ds.labels, ds.captions):
        if text != "a ripe banana on a wooden table":
            assert ds.class_names[label] in text, text
    assert any(t.startswith(("a ", "an ")) for t in ds.captions)


def test_deterministic_and_name_tracks_content(image_root):
    a = folder.load(str(image_root), image_size=8)
    b = folder.load(str(image_root), image_size=8)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.captions == b.captions and a.name == b.name
    assert a.name.startswith("folder-pictures-") and a.name.endswith("-train-8px")
    _picture(RED).save(image_root / "red_apple" / "apple9.png")
    assert folder.load(str(image_root), image_size=8).name != a.name


def test_process_slices_are_disjoint_and_cover(image_root):
    whole = folder.load(str(image_root), image_size=8)
    parts = [folder.load(str(image_root), image_size=8, process_index=i, process_count=2) for i in range(2)]
    np.testing.assert_array_equal(np.concatenate([p.images for p in parts]), whole.images)
    assert sum((p.captions for p in parts), ()) == whole.captions
    np.testing.assert_array_equal(np.concatenate([p.labels for p in parts]), whole.labels)
    assert parts[0].class_names == parts[1].class_names == whole.class_names
    assert parts[0].name != parts[1].name


def test_test_fraction_splits_each_class(image_root):
    train = folder.load(str(image_root), image_size=8, test_fraction=0.5)
    test = folder.load(str(image_root), split="test", image_size=8, test_fraction=0.5)
    # Every second file of each class (sorted); banana/broken.jpg is one of them and is skipped.
    assert test.labels.tolist() == [0, 1, 1]
    assert len(train) + len(test) == 8
    everything = folder.load(str(image_root), image_size=8)
    whole = sorted(img.tobytes() + c.encode() for img, c in zip(everything.images, everything.captions))
    split = sorted(img.tobytes() + c.encode()
                   for ds in (train, test) for img, c in zip(ds.images, ds.captions))
    assert split == whole  # together the two splits are the whole folder, each image once
    with pytest.raises(DatasetError, match="test_fraction"):
        folder.load(str(image_root), split="test")


def test_empty_missing_and_unreadable_folders(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        folder.load(str(tmp_path / "nowhere"))
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no files in class sub-folders"):
        folder.load(str(tmp_path / "empty"))
    (tmp_path / "junk" / "cats").mkdir(parents=True)
    (tmp_path / "junk" / "cats" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DatasetError, match="no readable image"):
        folder.load(str(tmp_path / "junk"))


def test_bad_captions_file_and_dispatch(image_root):
    ds = load_dataset(f"folder:{image_root}", "train", image_size=12)
    assert ds.images.shape == (8, 12, 12, 3)
    (image_root / "captions.csv").write_text("path;text\nbanana/b1.jpg;x\n")
    with pytest.raises(DatasetError, match="'file' and 'caption'"):
        folder.load(str(image_root))


def test_sixteen_bit_greyscale_pngs_keep_their_tones(tmp_path):
    root = tmp_path / "scans"
    (root / "xray").mkdir(parents=True)
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)  # black to white
    Image.fromarray(ramp).save(root / "xray" / "ramp.png")
    assert Image.open(root / "xray" / "ramp.png").mode == "I;16"
    image = folder.load(str(root), image_size=32).images[0]
    # Each 8-bit grey level is the 16-bit one divided by 257 (PIL's own conversion clips at 255,
    # which left 255/256 of the range white).
    expected = np.round(ramp / 257.0).astype(np.uint8)
    assert np.abs(image[..., 0].astype(int) - expected).max() <= 1
    assert (image[..., 0] == image[..., 2]).all() and image.mean() == pytest.approx(127.5, abs=2)


def test_captions_file_with_a_byte_order_mark_and_rows_naming_missing_files(image_root, caplog):
    (image_root / "captions.csv").write_text(
        "\ufefffile,caption\nbanana/b1.jpg,a ripe banana\nbanana/gone.jpg,a lost banana\n"
        "pears/p.jpg,a pear\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        ds = folder.load(str(image_root), image_size=8)
    assert "a ripe banana" in ds.captions
    warnings = [r.getMessage() for r in caplog.records if "caption row" in r.getMessage()]
    assert len(warnings) == 1 and "2 caption row(s)" in warnings[0]
    assert "banana/gone.jpg" in warnings[0] and "pears/p.jpg" in warnings[0]
