"""Files named after a user's images: they stay inside their output folder whatever an image's id
or path holds (`../x.jpg`, `/abs/x.jpg`, control characters), and an output folder never holds the
inputs it would overwrite."""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

from pipeline.errors import ConfigError

# Control characters, and the backslash that separates folders on Windows shares.
UNSAFE_CHARACTERS = re.compile(r"[\x00-\x1f\x7f\\]")
# A file name may have 255 bytes; this leaves room for suffixes, explain's `.<rank>.<class>` and
# the atomic writer's temporary name. A path may have 4096 bytes, the output folder's included.
MAX_PART_BYTES = 128
MAX_KEPT_BYTES = 1024
HASH_CHARACTERS = 12
# The end of every name `output_name` has changed; an id that ends so itself is changed too, so
# that no id kept as it is can equal another id's changed name.
HASHED = re.compile(rf"~[0-9a-f]{{{HASH_CHARACTERS}}}$")


def _utf8(text: str) -> bytes:
    # surrogatepass: a file name that is not UTF-8 reaches Python as lone surrogates
    return text.encode("utf-8", "surrogatepass")


def _is_plain(image_id: str) -> bool:
    """Names joined by `/` that stay where they are put: none empty, `.` or `..`, no control
    character or backslash, none and not all of them too long, no ending `output_name` gives."""
    parts = image_id.split("/")
    return (all(part not in ("", ".", "..") and len(_utf8(part)) <= MAX_PART_BYTES for part in parts)
            and len(_utf8(image_id)) <= MAX_KEPT_BYTES and not UNSAFE_CHARACTERS.search(image_id)
            and not HASHED.search(image_id))


def output_name(image_id: str) -> str:
    """The relative path, without suffix, of an image's output files in an output folder.

    An id of plain names joined by `/` (`img1`, `kitchen/0001`) is kept, so outputs mirror the
    input's folders. Any other id becomes one file name: its plain characters, each unsafe one as
    `_`, then `~` and a hash of the whole id, so two ids never share a name."""
    if _is_plain(image_id):
        return image_id
    parts = [part for part in image_id.split("/") if part not in ("", ".", "..")]
    readable = UNSAFE_CHARACTERS.sub("_", "_".join(parts))
    readable = _utf8(readable)[:MAX_PART_BYTES - HASH_CHARACTERS - 1].decode("utf-8", "ignore")
    return f"{readable}~{hashlib.sha256(_utf8(image_id)).hexdigest()[:HASH_CHARACTERS]}"


def output_file(folder: Path, image_id: str, suffix: str) -> Path:
    """`folder/<output_name>suffix`: an image's file in an output folder, always inside it."""
    return Path(folder) / f"{output_name(image_id)}{suffix}"


def check_apart(out: Path, inputs: Iterable[Path]) -> None:
    """Refuse an output folder that is, or holds, one of the inputs: writing it would overwrite them."""
    folder = Path(out).resolve()
    for path in inputs:
        if Path(path).resolve().is_relative_to(folder):
            raise ConfigError(f"--out {out}: is or holds the input {path}; choose a folder apart "
                              f"from the inputs")
