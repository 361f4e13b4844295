"""Images larger than `data.max_side` are read at their working size: a JPEG decoded reduced, its
EXIF turn applied; ground truth brought to that size by nearest neighbour, image-level labels
still from the whole mask; a mask of the wrong size named in one line."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.data.images import DataError, image_size, read_image, save_mask, working_size
from pipeline.data.voc import VocDataset

EXIF_ORIENTATION = 0x0112


def smooth_photo(height: int, width: int) -> np.ndarray:
    """uint8 RGB gradients with a bright square: JPEG keeps it well, so decodings compare closely."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([255 * x / width, 255 * y / height, 128 + 0 * x], -1)
    rgb[height // 4:height // 2, width // 4:width // 2] = 250
    return rgb.astype(np.uint8)


def shrunk(image: Image.Image, width: int, height: int) -> np.ndarray:
    """What the working size should look like: the whole decoded image, resized bilinearly."""
    return np.asarray(image.convert("RGB").resize((width, height), Image.BILINEAR)).astype(np.float64)


@pytest.mark.parametrize("height, width, max_side, expected", [
    (3024, 4032, 320, (240, 320)),  # a phone photo at the MSRC recipe's scale
    (4032, 3024, 320, (320, 240)),
    (213, 320, 320, (213, 320)),    # no larger than the limit: as it is
    (100, 50, 0, (100, 50)),        # 0: no limit
    (2, 1000, 10, (1, 10)),         # never a side of 0
])
def test_working_size(height, width, max_side, expected):
    assert working_size(height, width, max_side) == expected


def test_a_large_jpeg_is_read_at_the_working_size(tmp_path):
    photo = smooth_photo(360, 480)
    path = tmp_path / "big.jpg"
    Image.fromarray(photo).save(path, quality=95)
    out = read_image(path, 120)
    assert out.shape == (90, 120, 3) and out.dtype == np.uint8
    with Image.open(path) as image:
        reference = shrunk(image, 120, 90)
    assert np.abs(out.astype(np.float64) - reference).mean() < 3.0
    assert read_image(path, 0).shape == (360, 480, 3)
    assert read_image(path, 480).shape == (360, 480, 3)


@pytest.mark.parametrize("height, width, max_side, turn, expected", [
    (1333, 2000, 512, 1, (341, 512)),   # decoded at 1/2 rounded up (667 x 1000): 342 if shrunk from there
    (853, 1280, 320, 1, (213, 320)),    # decoded at 1/2: 214 if shrunk from there
    (1333, 2000, 512, 6, (512, 341)),   # the same, turned a quarter by its EXIF
])
def test_a_jpeg_decoded_reduced_has_the_size_its_header_gives(tmp_path, height, width, max_side, turn, expected):
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = turn
    path = tmp_path / "odd.jpg"
    Image.fromarray(smooth_photo(height, width)).save(path, quality=90, exif=exif.tobytes())
    assert read_image(path, max_side).shape == (*expected, 3)
    assert working_size(*image_size(path), max_side) == expected


def test_a_turned_jpeg_is_read_at_the_working_size_as_viewers_show_it(tmp_path):
    photo = smooth_photo(360, 480)  # stored landscape, shown portrait (EXIF 6: turn clockwise)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    path = tmp_path / "turned.jpg"
    Image.fromarray(photo).save(path, quality=95, exif=exif.tobytes())
    out = read_image(path, 120)
    assert out.shape == (120, 90, 3)
    shown = Image.fromarray(photo).transpose(Image.Transpose.ROTATE_270)  # clockwise quarter turn
    assert np.abs(out.astype(np.float64) - shrunk(shown, 90, 120)).mean() < 3.0


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grey_and_cmyk_jpegs_are_read_at_the_working_size(tmp_path, mode):
    path = tmp_path / f"{mode}.jpg"
    Image.fromarray(smooth_photo(360, 480)).convert(mode).save(path, quality=95)
    out = read_image(path, 120)
    assert out.shape == (90, 120, 3) and out.dtype == np.uint8
    with Image.open(path) as image:
        reference = shrunk(image, 120, 90)
    assert np.abs(out.astype(np.float64) - reference).mean() < 3.0


def write_photo(root, image: np.ndarray, mask: np.ndarray):
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "JPEGImages" / "a.png")
    save_mask(root / "SegmentationClass" / "a.png", mask)
    (root / "ImageSets/Segmentation/train.txt").write_text("a\n")
    (root / "classes.txt").write_text("background\ncat\ndot\n")
    return root


def test_a_split_works_on_large_images_at_the_working_size(tmp_path):
    mask = np.zeros((100, 200), np.uint8)
    mask[20:80, 40:160] = 1   # a cat, large
    mask[99, 199] = 2         # a dot of one pixel, which nearest-neighbour shrinking drops
    root = write_photo(tmp_path / "voc", smooth_photo(100, 200), mask)
    voc = VocDataset(root, "train", max_side=50)
    assert voc.image("a").shape == (25, 50, 3)
    assert voc.file_shape("a") == (100, 200) and voc.image_shape("a") == (25, 50)
    expected = np.asarray(Image.fromarray(mask).resize((50, 25), Image.NEAREST))
    np.testing.assert_array_equal(voc.working_mask("a"), expected)
    assert 2 not in expected
    assert voc.labels("a").tolist() == [0, 1]  # image-level labels from the whole mask: the dot too
    np.testing.assert_array_equal(voc.checked_mask("a", (25, 50)), expected)
    with pytest.raises(DataError) as info:
        voc.checked_mask("a", (100, 200))
    assert "\n" not in str(info.value) and "a.png" in str(info.value)
    whole = VocDataset(root, "train", max_side=0)
    assert whole.image("a").shape == (100, 200, 3)
    np.testing.assert_array_equal(whole.working_mask("a"), mask)


def test_a_mask_of_another_size_than_its_large_image_is_named_in_one_line(tmp_path):
    root = write_photo(tmp_path / "voc", smooth_photo(100, 200), np.zeros((50, 50), np.uint8))
    with pytest.raises(DataError) as info:
        VocDataset(root, "train", max_side=50).working_mask("a")
    message = str(info.value)
    assert "\n" not in message and "SegmentationClass/a.png" in message
    assert "50x50" in message and "200x100" in message
