"""pipeline.runs: atomic writes, prepare/finish, skip-if-done."""
from __future__ import annotations

import json
import os
import stat
import time

import pytest

from pipeline import runs
from pipeline.runs import write_bytes, write_json, write_with


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_write_json_and_bytes_leave_no_temporary_files(tmp_path):
    runs.write_json(tmp_path / "a.json", {"b": 2, "a": [1, 2.5]})
    runs.write_bytes(tmp_path / "sub" / "c.bin", b"\x00\x01")
    runs.write_text(tmp_path / "d.txt", "hello")
    assert listing(tmp_path) == ["a.json", "d.txt", "sub"]
    assert listing(tmp_path / "sub") == ["c.bin"]
    assert json.loads((tmp_path / "a.json").read_text()) == {"a": [1, 2.5], "b": 2}
    assert runs.read_json(tmp_path / "a.json") == {"a": [1, 2.5], "b": 2}
    assert (tmp_path / "sub" / "c.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "d.txt").read_text() == "hello"


def test_write_replaces_by_rename(tmp_path):
    path = tmp_path / "m.json"
    runs.write_json(path, {"v": 1})
    before = path.stat().st_ino
    with open(path) as reader:  # a reader that opened the old file keeps seeing the whole old file
        runs.write_json(path, {"v": 2})
        assert json.loads(reader.read()) == {"v": 1}
    assert runs.read_json(path) == {"v": 2}
    assert path.stat().st_ino != before  # a new file renamed over the old, not rewritten in place
    assert listing(tmp_path) == ["m.json"]


def test_failed_write_keeps_the_old_file_and_cleans_up(tmp_path):
    path = tmp_path / "m.bin"
    runs.write_bytes(path, b"old")

    def broken(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        runs.write_with(path, broken)
    assert path.read_bytes() == b"old"
    assert listing(tmp_path) == ["m.bin"]


def test_prepare_makes_a_staging_folder_per_hash_and_leaves_the_folder_alone(tmp_path):
    folder = tmp_path / "stage"
    runs.finish(folder, runs.prepare(folder, "aaaa"), {"hash": "aaaa"})
    staging = runs.prepare(folder, "bbbb")
    assert staging == tmp_path / ".stage.staging-bbbb"
    assert listing(staging) == [runs.STARTED]
    assert runs.read_json(staging / runs.STARTED) == {"hash": "bbbb"}
    assert runs.is_done(folder, "aaaa")  # the previous result stays until the new one is finished


def test_prepare_resumes_same_hash(tmp_path):
    staging = runs.prepare(tmp_path / "stage", "aaaa")
    (staging / "done_1.npz").write_bytes(b"x")
    assert runs.prepare(tmp_path / "stage", "aaaa") == staging
    assert listing(staging) == ["done_1.npz", runs.STARTED]
    assert (staging / "done_1.npz").read_bytes() == b"x"


def test_resume_drops_temporaries_a_kill_left_behind(tmp_path):
    staging = runs.prepare(tmp_path / "stage", "aaaa")
    (staging / "predictions").mkdir(parents=True)
    (staging / "done_1.npz").write_bytes(b"x")
    (staging / ".done_2.npz.k3j2.tmp").write_bytes(b"half")  # the name _atomic gives a file in flight
    (staging / "predictions" / ".a.png.x1y2.tmp").write_bytes(b"half")
    runs.prepare(tmp_path / "stage", "aaaa")
    assert listing(staging) == ["done_1.npz", "predictions", runs.STARTED]
    assert listing(staging / "predictions") == []


def test_finish_and_is_done(tmp_path):
    folder = tmp_path / "stage"
    staging = runs.prepare(folder, "h1")
    assert not runs.is_done(folder, "h1")  # started, not finished
    (staging / "out.txt").write_text("result")
    (staging / "sub").mkdir()
    (staging / "sub" / "a.png").write_bytes(b"png")
    runs.finish(folder, staging, {"hash": "h1", "seconds": 1.5})
    assert listing(tmp_path) == ["stage"]
    assert listing(folder) == [runs.MANIFEST, "out.txt", "sub"]
    assert runs.load_manifest(folder) == {"hash": "h1", "seconds": 1.5, "files": ["out.txt", "sub/a.png"]}
    assert runs.is_done(folder, "h1")
    assert not runs.is_done(folder, "h2")
    assert not runs.is_done(tmp_path / "elsewhere", "h1")
    assert runs.load_manifest(tmp_path / "elsewhere") is None


def test_package_versions():
    versions = runs.package_versions()
    for name in ("python", "torch", "numpy", "omegaconf"):
        assert versions[name] and versions[name] != "missing"
    import torch
    assert torch.__version__.startswith(versions["torch"])


def test_timer_measures_a_known_sleep():
    with runs.Timer() as timer:
        time.sleep(0.2)
    assert 0.2 <= timer.seconds < 5


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        write_bytes(tmp_path / "b.bin", b"\x00")
        write_with(tmp_path / "c.npy", lambda path: path.write_bytes(b"\x01"))
        with open(tmp_path / "plain", "w"):
            pass  # what the umask gives a file opened the ordinary way
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"a.json": mode, "b.bin": mode, "c.npy": mode, "plain": mode}
