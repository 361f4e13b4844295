"""Run folders: atomic writes, manifests and skip-if-done.

Every stage writes `manifest.json` beside its outputs when it finishes. Its `hash` covers the
stage's config section and the hashes of the upstream manifests, so a change anywhere upstream
re-runs everything downstream of it and nothing else. While a stage runs, `started.json` holds
the hash it is working towards: a killed run with the same hash resumes and keeps the per-image
files it had finished; a run with another hash starts from an empty folder.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

MANIFEST = "manifest.json"
RESULTS = "results.json"  # an evaluation stage's scores, beside its manifest
STARTED = "started.json"
TEMPORARY = ".tmp"  # the suffix of files being written, hidden behind a leading dot
PACKAGES = ("torch", "torchvision", "numpy", "segmentation-models-pytorch", "albumentations",
            "scikit-image", "pydensecrf2", "omegaconf")


class StageError(RuntimeError):
    """A stage cannot run; the message is one line for the user."""


class CheckpointError(StageError):
    """A checkpoint file that cannot or must not be loaded (it would run code, or it is cut off)."""


def check_recorded(path: Path, recorded: dict, expected: dict) -> None:
    """Refuse a file made under other settings than the run's `expected` ones (a checkpoint's
    classes or architecture): one line naming the file and every setting that differs."""
    differs = [f"{key} {recorded.get(key)!r} (this run's config: {value!r})"
               for key, value in expected.items() if recorded.get(key) != value]
    if differs:
        raise StageError(f"{path}: made for {'; '.join(differs)}; retrain it or point run_dir at "
                         f"the run it belongs to")


def _umask_mode() -> int:
    """The mode a plain `open()` would give a new file (0644 under umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY)
    os.close(handle)
    try:
        write(Path(tmp))
        # mkstemp makes the file 0600 and a rename keeps that: a shared report would be unreadable
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: Path, data: bytes) -> None:
    _atomic(Path(path), lambda tmp: tmp.write_bytes(data))


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_with(path: Path, save: Callable[[Path], None]) -> None:
    """Atomically write a file through a library saver that takes a path (np.savez, Image.save)."""
    _atomic(Path(path), save)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=10)
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def reset_peak_rss() -> None:
    """Count this process's peak memory afresh from now (Linux), so that each of the stages one
    process runs (`python -m pipeline all`) reports its own; elsewhere the count goes on."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mib() -> float:
    """Peak resident memory of this process since `reset_peak_rss`, in MiB. Pool workers are not
    counted: forked from this process, they share most of their pages with it, and the kernel
    keeps one peak for all finished children, which cannot be reset per stage."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def load_manifest(folder: Path) -> dict | None:
    path = Path(folder) / MANIFEST
    return read_json(path) if path.is_file() else None


def is_done(folder: Path, stage_hash: str) -> bool:
    manifest = load_manifest(folder)
    return manifest is not None and manifest.get("hash") == stage_hash


def prepare(folder: Path, stage_hash: str) -> None:
    """Empty `folder` unless it holds an unfinished (killed) run of the same hash, which resumes
    without the half-written temporaries the kill left behind."""
    folder = Path(folder)
    started = folder / STARTED
    same = started.is_file() and read_json(started).get("hash") == stage_hash
    if folder.exists() and not same:
        shutil.rmtree(folder)
    for stale in folder.rglob(f".*{TEMPORARY}"):
        stale.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    write_json(started, {"hash": stage_hash})


def finish(folder: Path, manifest: dict) -> None:
    write_json(Path(folder) / MANIFEST, manifest)
    (Path(folder) / STARTED).unlink(missing_ok=True)


class Timer:
    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def progress(iterable, desc: str, total: int | None = None):
    """A tqdm bar that redraws at most every few seconds, so logs of long runs stay short."""
    from tqdm import tqdm
    interval = 0.1 if sys.stderr.isatty() else 5.0
    return tqdm(iterable, desc=desc, total=total, leave=False, mininterval=interval)
