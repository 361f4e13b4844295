"""The dataset readers against generated bad input: broken and odd images, masks of the wrong size
or with unknown ids, odd labels CSVs (random text, separators, empty and huge cells, paths that
lead out of the dataset), odd class lists and split lists. Every case either reads or raises one
DataError of one line naming a file, and writes nothing: the tree around it hashes the same
before and after. A few cases run `python -m pipeline` itself, which must exit 0 or 2 with one
line and no traceback, and write only inside its run folder.

Each case is drawn from `random.Random` seeded with its number, so a failure reruns alone:
`pytest tests/test_fuzz_readers.py -k 'case-123'`."""
from __future__ import annotations

import hashlib
import io
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.folder import FolderDataset
from pipeline.data.images import DataError, image_size, read_image, read_mask
from pipeline.data.outputs import output_file
from pipeline.data.voc import VocDataset

REPO = Path(__file__).resolve().parents[1]
CASES = 600
CLASSES = ["cat", "dog", "sofa"]
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".gif": "GIF", ".webp": "WEBP"}
MODES = ["RGB", "L", "RGBA", "P", "I;16", "1", "CMYK"]
ESCAPES = ["../", "../../", "/", "/etc/", "./", "~/", "..\\", "a/../../", "//", ""]
ODD_TEXT = ["", " ", ",", ";", '"', "'", "\t", "\n", "\r", "\x00", "\\", "=", "é", "猫", "\u2028", "\ufeff",
            "\udcff", "💥", "\x85", "NUL", "labels", "image"]


def tree(root: Path) -> dict[str, str]:
    return {path.relative_to(root).as_posix(): "folder" if path.is_dir() else
            hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(root.rglob("*"))}


# ----------------------------------------------------------------------------- generated files

def image_bytes(rng: random.Random, suffix: str | None = None) -> bytes:
    """A small valid image in a random format and, where the format stores it, a random mode."""
    suffix = suffix or rng.choice(list(FORMATS))
    height, width = rng.randint(1, 24), rng.randint(1, 24)
    pixels = np.random.default_rng(rng.randrange(2 ** 32)).integers(0, 256, (height, width, 3), np.uint8)
    mode = rng.choice(MODES)
    image = (Image.fromarray(pixels[..., 0].astype(np.uint16) * 257) if mode == "I;16"
             else Image.fromarray(pixels).convert(mode))
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=FORMATS[suffix])
    except (OSError, ValueError, KeyError):  # a mode this format cannot store
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=FORMATS[suffix])
    return buffer.getvalue()


def with_odd_exif(rng: random.Random) -> bytes:
    """A JPEG whose EXIF holds an orientation out of range, or random bytes."""
    exif = Image.Exif()
    exif[0x0112] = rng.choice([0, 2, 4, 5, 7, 9, 255, 65535])
    data = exif.tobytes() if rng.random() < 0.5 else b"Exif\x00\x00" + rng.randbytes(rng.randint(0, 64))
    buffer = io.BytesIO()
    Image.new("RGB", (rng.randint(1, 16), rng.randint(1, 16))).save(buffer, format="JPEG", exif=data)
    return buffer.getvalue()


def flipped(rng: random.Random, data: bytes) -> bytes:
    changed = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        changed[rng.randrange(len(changed))] = rng.randrange(256)
    return bytes(changed)


def broken_image(rng: random.Random) -> bytes:
    """Bytes a reader may be handed as an image: empty, random, cut short, with bytes changed, a
    valid header then random bytes, odd EXIF, or (one time in seven) a valid image."""
    whole = image_bytes(rng)
    return rng.choice([
        lambda: b"",
        lambda: rng.randbytes(rng.randint(1, 2048)),
        lambda: whole[:rng.randint(1, max(1, len(whole) - 1))],
        lambda: flipped(rng, whole),
        lambda: whole[:rng.randint(8, 64)] + rng.randbytes(rng.randint(0, 256)),
        lambda: with_odd_exif(rng),
        lambda: whole,
    ])()


def mask_bytes(rng: random.Random, shape: tuple[int, int], classes: int) -> bytes:
    """A mask of the image's size or not, with ids in range or not, in a mode a mask has or not;
    one time in five a broken file."""
    height, width = shape if rng.random() < 0.5 else (rng.randint(1, 30), rng.randint(1, 30))
    top = rng.choice([classes, classes + 1, 254, 255])
    labels = np.random.default_rng(rng.randrange(2 ** 32)).integers(0, top + 1, (height, width), np.uint8)
    mode = rng.choice(["P", "L", "RGB", "I;16", "1"])
    image = (Image.fromarray(labels.astype(np.uint16) * 300) if mode == "I;16"
             else Image.fromarray(labels).convert(mode))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue() if rng.random() < 0.8 else broken_image(rng)


def odd_text(rng: random.Random, longest: int = 40) -> str:
    """Separators, quotes, control characters, line breaks of every kind, a lone surrogate (which
    no UTF-8 file can hold) and random characters."""
    text = "".join(rng.choice(ODD_TEXT) if rng.random() < 0.4 else chr(rng.randint(32, 0x2FFF))
                   for _ in range(rng.randint(0, longest)))
    return text if rng.random() < 0.5 else text.replace("\udcff", "?")


def odd_name(rng: random.Random, names: list[str]) -> str:
    """An image cell: a real image's name (with or without suffix, behind a path escape), a name
    too long for a file, an absolute path, or junk."""
    return rng.choice([
        lambda: rng.choice(names),
        lambda: rng.choice(names).rsplit(".", 1)[0],
        lambda: rng.choice(ESCAPES) + rng.choice(["set/", "", "x/"]) + rng.choice(names),
        lambda: "x" * rng.choice([255, 256, 300, 5000]),
        lambda: str(Path.cwd() / rng.choice(names)),
        lambda: odd_text(rng) + ".png",
        lambda: odd_text(rng),
    ])()


def odd_labels(rng: random.Random) -> str:
    return rng.choice([
        lambda: ";".join(rng.sample(CLASSES, rng.randint(1, 3))),
        lambda: ";".join(rng.choice(CLASSES + ["", " ", "CAT", "bird", odd_text(rng, 5)])
                         for _ in range(rng.randint(0, 5))),
        lambda: "x" * rng.choice([1000, 200_000]),  # past the csv module's field limit too
        lambda: odd_text(rng),
    ])()


def odd_row(rng: random.Random, names: list[str]) -> str:
    cells = [odd_name(rng, names), odd_labels(rng)]
    if rng.random() < 0.2:
        cells = cells[:rng.randint(0, 1)] + [odd_text(rng) for _ in range(rng.randint(0, 3))]
    quote = rng.random() < 0.3
    return ",".join(f'"{c}"' if quote else c for c in cells)


def labels_csv(rng: random.Random, names: list[str]) -> bytes:
    """Rows that mostly name the folder's images, some by a path that leads out and back in or by
    an absolute one, a few odd rows, maybe a header; any line ending, a byte-order mark or a tail
    that is not UTF-8."""
    lines = []
    for name in rng.sample(names, rng.randint(min(1, len(names)), len(names))):
        good = [name, f"../set/{name}", f"./{name}", f"{Path.cwd()}/set/{name}", name.rsplit(".", 1)[0]]
        lines.append(f"{rng.choice(good)},{';'.join(rng.sample(CLASSES, rng.randint(1, 3)))}")
    lines += [odd_row(rng, names) for _ in range(rng.choice([0, 0, 0, 1, 2]))]
    rng.shuffle(lines)
    if rng.random() < 0.5:
        headers = ["image,labels"] * 6 + ["labels,image", "image,classes", "IMAGE,LABELS,x"]
        lines.insert(0, rng.choice(headers))
    data = rng.choice(["\n", "\r\n", "\r"]).join(lines).encode("utf-8", "surrogatepass")
    if rng.random() < 0.1:
        data = b"\xef\xbb\xbf" + data
    if rng.random() < 0.05:
        data += rng.randbytes(rng.randint(1, 16))
    return data


def class_list(rng: random.Random) -> bytes:
    """classes.txt: the classes, one of them twice, 254 or more, odd names or none; any line ending,
    a byte-order mark, or cut and followed by bytes that are not UTF-8."""
    names = rng.choice([
        ["background", *CLASSES],
        ["background", *CLASSES, rng.choice(CLASSES)],
        ["background", *(f"c{i}" for i in range(rng.choice([254, 255, 300])))],
        [odd_text(rng, 10) for _ in range(rng.randint(0, 6))],
        [],
    ])
    data = rng.choice(["\n", "\r\n", "\r"]).join(names).encode("utf-8", "surrogatepass")
    if rng.random() < 0.2:
        data = b"\xef\xbb\xbf" + data
    if rng.random() < 0.2:
        data = data[:rng.randint(0, len(data))] + rng.randbytes(rng.randint(1, 8))
    return data


def good_or_odd_classes(rng: random.Random, odd_share: float) -> bytes:
    return class_list(rng) if rng.random() < odd_share else "\n".join(["background", *CLASSES]).encode()


# ----------------------------------------------------------------------------- the cases: build, then read

def one_image(rng: random.Random, root: Path) -> None:
    (root / f"image{rng.choice(list(FORMATS))}").write_bytes(broken_image(rng))


def read_one_image(root: Path, rng: random.Random) -> None:
    """The image reads as uint8 RGB of the size its header gives, or each reader raises."""
    [path] = root.iterdir()
    image = expect_data_error(read_image, path)
    size = expect_data_error(image_size, path)
    if image is not None:
        assert image.dtype == np.uint8 and image.shape == (*size, 3)
    expect_data_error(read_mask, path)


def folder_dataset(rng: random.Random, root: Path) -> None:
    """A labelled image folder: a few images (some broken), classes.txt and an odd labels.csv."""
    names = []
    for index in range(rng.choice([0, 1, 2, 3, 4, 4])):
        suffix = rng.choice(list(FORMATS))
        name = f"{rng.choice(['', 'sub/'])}img{index}{suffix}"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(image_bytes(rng, suffix) if rng.random() < 0.7 else broken_image(rng))
        names.append(name)
    (root / "classes.txt").write_bytes(good_or_odd_classes(rng, 0.2))
    (root / "labels.csv").write_bytes(labels_csv(rng, names or ["none.png"]))


def read_folder_dataset(root: Path, rng: random.Random) -> None:
    dataset = FolderDataset(root, rng.choice(["train", "val", "all"]),
                            val_fraction=rng.choice([0.5, 0.5, 0.5, 0.0, 1.0]))
    assert len(set(dataset.ids)) == len(dataset.ids) and dataset.num_classes <= 254
    assert dataset.label_matrix().shape == (len(dataset), dataset.num_classes)
    read_images(dataset)


def voc_dataset(rng: random.Random, root: Path) -> None:
    """A VOC folder: listed ids (some odd), images and masks (some bad), maybe an odd class list."""
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    ids = [f"img{index}" for index in range(rng.randint(1, 4))]
    for image_id in ids:
        data = image_bytes(rng, ".png")
        image_file = root / "JPEGImages" / f"{image_id}.png"
        image_file.write_bytes(data if rng.random() < 0.8 else broken_image(rng))
        with Image.open(io.BytesIO(data)) as image:
            shape = (image.height, image.width)
        (root / "SegmentationClass" / f"{image_id}.png").write_bytes(mask_bytes(rng, shape, len(CLASSES)))
    listed = [rng.choice([*ids, *ids, odd_text(rng, 12), rng.choice(ESCAPES) + rng.choice(ids)])
              for _ in range(rng.randint(0, 6))]
    data = "\n".join(listed).encode("utf-8", "surrogatepass")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_bytes(
        data + rng.randbytes(8) if rng.random() < 0.1 else data)
    (root / "classes.txt").write_bytes(good_or_odd_classes(rng, 0.5))


def read_voc_dataset(root: Path, rng: random.Random) -> None:
    dataset = VocDataset(root, "train")
    assert dataset.num_classes <= 254 and len(set(dataset.class_names)) == dataset.num_classes
    for image_id in dataset.ids:
        shape = expect_data_error(dataset.image_shape, image_id)
        if shape is not None:
            labels = expect_data_error(dataset.checked_mask, image_id, shape)
            assert labels is None or labels.shape == shape
        expect_data_error(dataset.labels, image_id)
    read_images(dataset)


def read_images(dataset) -> None:
    """Every image of the split reads as uint8 RGB of the size its header gives, or is one
    DataError; the files named after it would lie inside their folder."""
    out = Path("/nonexistent/out")
    for image_id in dataset.ids:
        assert out in output_file(out, image_id, ".png").resolve().parents
        image = expect_data_error(dataset.image, image_id)
        if image is not None:
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            assert image.shape[:2] == dataset.image_shape(image_id)


def expect_data_error(read, *args):
    """`read(*args)`, or None where it raised a DataError of one line naming a file."""
    try:
        return read(*args)
    except DataError as error:
        check_message(str(error))
        return None


def check_message(message: str) -> None:
    """One line that starts with the file it is about (every path here is absolute)."""
    assert len(message.splitlines()) == 1 and message.startswith("/"), message


KINDS = [(one_image, read_one_image), (folder_dataset, read_folder_dataset), (voc_dataset, read_voc_dataset)]


@pytest.mark.parametrize("case", range(CASES), ids=lambda case: f"case-{case}")
def test_a_reader_reads_or_raises_one_line_and_writes_nothing(tmp_path, case, monkeypatch):
    rng = random.Random(case)
    build, read = KINDS[case % len(KINDS)]
    root = tmp_path / "set"
    root.mkdir()
    monkeypatch.chdir(tmp_path)  # where a CSV's absolute paths point
    build(rng, root)
    before = tree(tmp_path)
    try:
        read(root, rng)
    except DataError as error:
        check_message(str(error))
    assert tree(tmp_path) == before


# ----------------------------------------------------------------------------- through the command line

def command(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=300)


def check_exit(result: subprocess.CompletedProcess, codes: tuple[int, ...]) -> None:
    """An exit code among `codes`; exit 2 ends with one line of error; never a traceback."""
    assert result.returncode in codes and "Traceback" not in result.stderr, result.stderr
    if result.returncode == 2:
        error = result.stderr.rsplit("error: ", 1)[1].strip()
        assert len(error.splitlines()) == 1, result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("case", range(4), ids=lambda case: f"cli-{case}")
def test_the_data_stage_on_a_bad_folder_dataset_exits_0_or_2_and_writes_only_its_run(tmp_path, case):
    root = tmp_path / "set"
    root.mkdir()
    folder_dataset(random.Random(f"cli-{case}"), root)
    run_dir = tmp_path / "run"
    (tmp_path / "config.yaml").write_text("threads: 1\n")
    before = tree(tmp_path)
    splits = [f"{key}=train" for key in ("cls.split", "cls.val_split", "eval.split", "seg.split",
                                         "seg.val_split")] + ["cam.splits=[train]", "pseudo.splits=[train]"]
    result = command(tmp_path, "data", "--config", "config.yaml", f"run_dir={run_dir}", "data.name=folder",
                     f"data.root={root}", "data.val_fraction=0.5", *splits)
    check_exit(result, (0, 2))
    assert {k: v for k, v in tree(tmp_path).items() if not k.startswith("run")} == before


@pytest.mark.slow
def test_explain_on_bad_images_names_them_and_writes_only_its_out_folder(tmp_path):
    rng = random.Random("cli-explain")
    images = tmp_path / "images"
    images.mkdir()
    (images / "good.png").write_bytes(image_bytes(rng, ".png"))
    for index in range(6):
        suffix = rng.choice(list(FORMATS))
        (images / f"bad{index}{suffix}").write_bytes(broken_image(rng))
    before = tree(tmp_path)
    result = command(tmp_path, "explain", "--images", "images", "--out", "out", "--model", "resnet18",
                     "--size", "32", "--top-k", "1", "--methods", "gradcam", "--layers", "layer4.1")
    check_exit(result, (0, 1))
    assert {k: v for k, v in tree(tmp_path).items() if not k.startswith("out")} == before
    assert (tmp_path / "out" / "summary.json").is_file()
