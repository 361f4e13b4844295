"""Image and mask files, as every dataset reader and stage reads and writes them: any image as
uint8 RGB, label masks as VOC palette PNGs (0 = background, 255 = ignore), and the one-line
errors bad files raise."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from pipeline.runs import write_with

log = logging.getLogger("pipeline")

IGNORE = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# What Pillow raises on a file it cannot decode; DecompressionBombError: a header claiming more
# pixels than Image.MAX_IMAGE_PIXELS allows (twice that), which a few bytes can do.
UNREADABLE = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)
# EXIF orientations that turn the stored pixels a quarter (5: transpose, 6: 90 degrees clockwise,
# 7: transverse, 8: 90 degrees anticlockwise): the image shows as width x height swapped.
QUARTER_TURNS = (5, 6, 7, 8)


class DataError(ValueError):
    """Bad input data; the message is one line naming the file and the problem."""


def quoted(text: str, limit: int = 100) -> str:
    """Text from a user's file as a one-line message shows it: in quotes, what is not printable
    (a newline) escaped, cut short."""
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    return f"'{text}'" if len(text) <= limit else f"'{text[:limit]}'..."


class BadImagesError(DataError):
    """Several bad images at once: a summary line, then one line per bad file."""


class BadImages:
    """Collects the DataErrors of single images, so that a pass over a split goes on past a bad
    image and then names every bad file at once instead of stopping at the first:

        bad = BadImages(f"{list_file}: invalid labels")
        for image_id in ids:
            with bad.skip():
                ...
        bad.raise_if_any()
    """

    def __init__(self, summary: str):
        self.summary = summary
        self.problems: list[str] = []

    @contextmanager
    def skip(self):
        try:
            yield
        except DataError as error:
            self.problems.append(str(error))

    def add(self, problem: str) -> None:
        """Record a problem reported from elsewhere (a worker process)."""
        self.problems.append(problem)

    def raise_if_any(self) -> None:
        if self.problems:
            count = f"{len(self.problems)} image{'s' if len(self.problems) > 1 else ''}"
            raise BadImagesError("\n".join([f"{self.summary} ({count}):", *self.problems]))


def skipping(stage: str) -> BadImages:
    """The collector of a per-image stage. The stage writes every good image and then fails, so
    that it has no manifest: downstream stages wait, and a rerun resumes with just the fixed images."""
    return BadImages(f"{stage}: skipped bad images and wrote every other one; "
                     f"fix them or drop them from the split list, then rerun")


def palette() -> list[int]:
    """The VOC colour map: label i gets the colour built from the bits of i."""
    colours = []
    for label in range(256):
        r = g = b = 0
        value = label
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        colours.extend((r, g, b))
    return colours


PALETTE = palette()


def save_mask(path: Path, labels: np.ndarray) -> None:
    """Write a uint8 label map as a VOC palette PNG, atomically."""
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(PALETTE)
    write_with(Path(path), lambda tmp: image.save(tmp, format="PNG"))


def to_rgb(image: Image.Image, path: Path) -> np.ndarray:
    """Any PIL image (grey, RGBA, palette, 16-bit) as uint8 RGB [H, W, 3]."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if values.max(initial=0) > 255 else 255.0
        grey = np.clip(values / top * 255.0, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise DataError(f"{path}: unsupported image mode {image.mode}")
    return array


def working_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(height, width) scaled so that the longer side is at most `max_side` (0: any), aspect kept."""
    if max_side <= 0 or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resized_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A uint8 RGB image at (height, width) `shape` (bilinear, which Pillow filters over the whole
    footprint when it shrinks, so a large photo is not aliased)."""
    if image.shape[:2] == tuple(shape):
        return image
    height, width = shape
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def resized_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A label map at (height, width) `shape`, by nearest neighbour: label ids are not blended."""
    if mask.shape == tuple(shape):
        return mask
    height, width = shape
    return np.asarray(Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST))


def read_sized_image(path: Path, max_side: int = 0) -> tuple[np.ndarray, tuple[int, int]]:
    """(the image as viewers show it (its EXIF orientation applied), as uint8 RGB [H, W, 3], its
    longer side at most `max_side` (0: its own size); the file's (height, width) as shown), from
    one opening of the file. A JPEG larger than `max_side` is decoded at the smallest power-of-two
    reduction still at least that size, so a phone photo never takes its full pixel count in
    memory."""
    try:
        with Image.open(path) as image:
            file_shape = shown_shape(image)
            shape = working_size(*file_shape, max_side)
            if image.format in ("JPEG", "MPO") and 0 < max_side < max(image.size):
                height, width = working_size(image.height, image.width, max_side)
                image.draft(image.mode, (width, height))  # rounds up: the resize below sets the size
            ImageOps.exif_transpose(image, in_place=True)
            return resized_image(to_rgb(image, path), shape), file_shape
    except UNREADABLE as error:
        raise DataError(f"{path}: cannot read image ({error})") from None


def read_image(path: Path, max_side: int = 0) -> np.ndarray:
    """The image of `read_sized_image` alone."""
    return read_sized_image(path, max_side)[0]


def read_or_skip(path: Path, name: str, failed: list[dict],
                 max_side: int = 0) -> tuple[np.ndarray, tuple[int, int]] | None:
    """`read_sized_image` of the file at `path`, or None for a file that cannot be read: the
    commands that take a user's images (label, explain) name it in the log and in `failed`, and
    go on."""
    try:
        return read_sized_image(path, max_side)
    except DataError as error:
        log.warning("skipped: %s", error)
        failed.append({"image": name, "error": str(error)})
        return None


def shown_shape(image: Image.Image) -> tuple[int, int]:
    """(height, width) of an opened image as viewers show it, from its header: its pixels are
    decoded only for a PNG without EXIF before them, which may keep its EXIF after them."""
    # Pillow turns a TIFF by its orientation itself, its size from opening on
    turned = image.format != "TIFF" and image.getexif().get(ExifTags.Base.Orientation) in QUARTER_TURNS
    return (image.width, image.height) if turned else (image.height, image.width)


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of the image file as `read_image` gives it at its own size (`shown_shape`)."""
    try:
        with Image.open(path) as image:
            return shown_shape(image)
    except UNREADABLE as error:
        raise DataError(f"{path}: cannot read image ({error})") from None


def read_mask(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            mode = image.mode
            labels = np.asarray(image, dtype=np.uint8).copy() if mode in ("P", "L") else None
    except UNREADABLE as error:
        raise DataError(f"{path}: cannot read mask ({error})") from None
    if labels is None:
        raise DataError(f"{path}: mask must be a palette or grey PNG of label ids, not mode {mode}")
    return labels


def check_fits(path: Path, mask: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
    """`mask` (read from `path`) itself, if its size is `image_shape`, its image's."""
    if mask.shape != tuple(image_shape[:2]):
        raise DataError(f"{path}: mask size {mask.shape[1]}x{mask.shape[0]} "
                        f"differs from its image's {image_shape[1]}x{image_shape[0]}")
    return mask
