"""Run folders: atomic writes, manifests and skip-if-done.

Every stage writes `manifest.json` beside its outputs when it finishes: the files it wrote, and a
`hash` of the stage's config section, of the upstream manifests and of the dataset files it reads,
so a change anywhere upstream re-runs everything downstream of it and nothing else. A stage runs
in a staging folder beside its folder, named after the hash of its settings (`started.json`
inside holds it too): a killed run of the same settings resumes there and keeps the per-image
files it had finished; a run of other settings starts in another, empty one. Only a finished run
replaces the folder's previous result, and of that camseg deletes only the files its manifest
lists. One command at a time writes to a run folder (`locked`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

MANIFEST = "manifest.json"
RESULTS = "results.json"  # an evaluation stage's scores, beside its manifest
STARTED = "started.json"
TEMPORARY = ".tmp"  # the suffix of files being written, hidden behind a leading dot
LOCK = "camseg.lock"  # in a run folder (or an --out folder) while a command writes there
PACKAGES = ("torch", "torchvision", "numpy", "segmentation-models-pytorch", "albumentations",
            "scikit-image", "pydensecrf2", "omegaconf")

log = logging.getLogger("pipeline")


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


def _write_and_rename(path: Path, write: Callable[[Path], None]) -> None:
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


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write `path` through a temporary file renamed over it: the previous file stays whole until
    the new one is, and a full disk or a read-only folder is one line naming the file."""
    try:
        _write_and_rename(path, write)
    except OSError as error:
        raise StageError(f"{path}: cannot write ({error.strerror or error})") from None
    _die_if_asked()


# Test-only fault injection: with CAMSEG_FAULT_AFTER_WRITES=N in its environment, a process is
# killed (SIGKILL, as a crash or `kill -9` would) right after its N-th file write; a pool worker,
# which counts from the count its parent had when it forked, takes its parent with it. The tests
# kill stages at many points this way and check that the resumed runs end where uninterrupted ones do.
FAULT_AFTER_WRITES = "CAMSEG_FAULT_AFTER_WRITES"


def _die_if_asked() -> None:
    left = os.environ.get(FAULT_AFTER_WRITES)
    if left is None:
        return
    if int(left) > 1:
        os.environ[FAULT_AFTER_WRITES] = str(int(left) - 1)
        return
    if multiprocessing.parent_process() is not None:
        os.kill(os.getppid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


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


def staging_folder(folder: Path, stage_hash: str) -> Path:
    """Where a stage of `stage_hash` runs, hidden beside its folder: the folder keeps its previous
    result until this run has finished, and a killed run of the same hash resumes here."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.staging-{stage_hash}"


def _listed_files(folder: Path) -> set[str] | None:
    """The files (relative paths) that the camseg manifest in `folder` lists, itself included;
    None where there is no readable manifest with a file list."""
    try:
        manifest = load_manifest(folder)
    except (OSError, ValueError):  # a manifest.json that is not camseg's JSON
        return None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, list):
        return None
    # a name that leads out of the folder is nothing camseg wrote there
    return {MANIFEST, *(name for name in files if isinstance(name, str) and ".." not in Path(name).parts
                        and not Path(name).is_absolute())}


def check_owned(folder: Path) -> None:
    """Refuse a stage folder holding a file that no camseg manifest in it lists: camseg would have
    to delete that file to put its result there, and it deletes only what it wrote."""
    folder = Path(folder)
    if not folder.exists():
        return
    listed = _listed_files(folder)
    if listed is None and (folder / MANIFEST).is_file():
        raise StageError(f"{folder}: its manifest lists no files (an earlier camseg's), so camseg cannot "
                         f"tell its files from others: move the folder away to run this stage again")
    strangers = [folder] if not folder.is_dir() else [
        path for path in sorted(folder.rglob("*"))
        if not path.is_dir() and path.relative_to(folder).as_posix() not in (listed or set())]
    if strangers:
        more = f" and {len(strangers) - 1} more files" if len(strangers) > 1 else ""
        raise StageError(f"{folder}: holds {strangers[0]}{more}, which no camseg manifest there "
                         f"lists; camseg deletes only what it wrote: move them away or set run_dir to "
                         f"another folder")


def prepare(folder: Path, stage_hash: str) -> Path:
    """The staging folder a stage of `stage_hash` writes into, ready: a killed run of the same hash
    resumes there, without the half-written temporaries the kill left behind. A `folder` holding
    files camseg did not write is refused first, before any work."""
    check_owned(folder)
    staging = staging_folder(folder, stage_hash)
    for stale in staging.rglob(f".*{TEMPORARY}"):
        stale.unlink()
    staging.mkdir(parents=True, exist_ok=True)
    write_json(staging / STARTED, {"hash": stage_hash})
    return staging


def finish(folder: Path, staging: Path, manifest: dict) -> dict:
    """Write the manifest, listing every file the stage wrote, and put the staged result in place
    of the folder's previous one; returns the manifest as written."""
    staging = Path(staging)
    files = sorted(path.relative_to(staging).as_posix() for path in staging.rglob("*")
                   if path.is_file() and path.relative_to(staging).as_posix() not in (STARTED, MANIFEST))
    written = {**manifest, "files": files}
    write_json(staging / MANIFEST, written)
    _swap_in(staging, Path(folder))
    return written


def settle(folder: Path, stage_hash: str) -> None:
    """Put in place a finished run of `stage_hash` that a kill interrupted while it moved in."""
    staging = staging_folder(folder, stage_hash)
    if (staging / MANIFEST).is_file():
        _swap_in(staging, Path(folder))


def _swap_in(staging: Path, folder: Path) -> None:
    """Delete the files `folder`'s manifest lists (the manifest last, so that a kill midway leaves
    them listed) and the folders they leave empty, then rename `staging` to `folder`."""
    (staging / STARTED).unlink(missing_ok=True)
    check_owned(folder)
    if folder.exists():
        for name in [*sorted((_listed_files(folder) or set()) - {MANIFEST}), MANIFEST]:
            (folder / name).unlink(missing_ok=True)
        for empty in sorted(folder.rglob("*"), key=lambda path: len(path.parts), reverse=True):
            empty.rmdir()
        folder.rmdir()
    os.replace(staging, folder)


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold `folder` for this process while the block runs: a second command writing there stops
    with one line naming the holder; the lock of a process that has ended on this machine (killed)
    is taken over with a warning."""
    path = Path(folder) / LOCK
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    made = [level for level in [path.parent, *path.parent.parents] if not level.exists()]
    _take_lock(path, mine)
    try:
        yield
    finally:
        if _lock_holder(path) == mine:  # not a lock another process took over meanwhile
            path.unlink()
        _remove_if_empty(made)


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove the `folders` (deepest first) that are still empty: a command refused before it wrote
    anything leaves no trace."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): neither it nor its parents are ours to remove
            return


def _take_lock(path: Path, mine: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if _create_lock(path, mine):
            return
        holder = _lock_holder(path)
        if not _has_ended(holder):
            raise StageError(f"{path.parent}: in use by process {holder.get('pid', '?')} on "
                             f"{holder.get('host', '?')} since {holder.get('since', '?')}; wait for it to "
                             f"finish, or delete {path} if that process is gone")
        log.warning("%s: taking over the lock of process %s, which has ended", path.parent, holder["pid"])
        path.unlink(missing_ok=True)
        if not _create_lock(path, mine):
            raise StageError(f"{path.parent}: another command took the lock first ({path})")
    except OSError as error:  # a read-only folder, a full disk
        raise StageError(f"{path.parent}: cannot write here ({error.strerror or error})") from None


def _create_lock(path: Path, mine: dict) -> bool:
    """Create the lock file holding `mine` unless it exists (False then): a hard link to a file
    written beforehand, so that no reader sees the lock half-written."""
    written = path.parent / f".{path.name}.{os.getpid()}{TEMPORARY}"
    with os.fdopen(os.open(written, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o644), "w") as lock:
        json.dump(mine, lock)
    try:
        os.link(written, path)
    except FileExistsError:
        return False
    finally:
        written.unlink()
    return True


def _lock_holder(path: Path) -> dict:
    """Who holds the lock; {} when that cannot be read (a lock being written, or none)."""
    try:
        holder = read_json(path)
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _has_ended(holder: dict) -> bool:
    """Whether the lock's process is known to have ended: one of this machine's that no longer runs."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process, running
        pass
    return False


@dataclass(frozen=True)
class RunOutputs:
    """A finished run, for the commands that read one (label, explain) and not through the stage
    runner: its folder, and where a stage's output lies in it, `path(stage, output)`, by the stage
    registry's `locate` (`pipeline.stages.output_path`)."""
    folder: Path
    locate: Callable[[Path, str, str], Path]

    def path(self, stage: str, output: str) -> Path:
        return self.locate(self.folder, stage, output)


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
