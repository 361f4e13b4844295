"""Several processes: `torchrun --nproc_per_node=2 -m pipeline ...` on CPU (gloo) against one process.

One module-scoped run on the shapes dataset (32 px, 32 + 8 images): a single-process classifier
training killed after its first epoch, resumed and finished by two torchrun processes; then CAMs
by two torchrun processes and by this process from that one classifier. Each torchrun launch
starts python and torch in three processes, so the launches are few and shared.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline import distributed, train
from pipeline.config import load_config
from pipeline.data.transforms import normalised_batch
from pipeline.data.voc import VocDataset
from pipeline.models.checkpoints import load_classifier
from pipeline.runs import MANIFEST, read_json, staging_folder
from pipeline.stages import execute, input_paths, settings_hash, stage_folder, stage_hash
from pipeline.stages import pseudo as pseudo_stage

pytestmark = pytest.mark.slow  # torchrun with 2 processes: `make test-fast` leaves it out

MANIFEST_KEYS = {"stage", "hash", "config", "upstream", "seconds", "peak_rss_mib", "git_commit", "files",
                 "packages", "metrics"}


def overrides(tmp, run_dir):
    return [f"run_dir={run_dir}", "data.name=shapes", f"data.root={tmp}/data", "data.image_size=32",
            "data.n_train=32", "data.n_val=8", "cls.split=train", "cls.crop_size=32", "cls.epochs=2",
            "cls.batch_size=8", "cam.layers=[layer3,layer4]", "cam.batch_size=8", "pseudo.workers=1",
            "threads=1"]


def torchrun(tmp, stage, run_dir):
    """`torchrun --standalone --nproc_per_node=2 -m pipeline STAGE ...` (through the module the
    torchrun script runs, with this interpreter); returns its output."""
    empty = tmp / "empty.yaml"  # the schema's defaults, as load_config(None, ...) in this process
    empty.write_text("{}\n")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "pipeline", stage, "--config", str(empty), *overrides(tmp, run_dir)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    return output


class Killed(Exception):
    pass


def kill_after_first_epoch(monkeypatch):
    """Make the training stop as a killed process would, right after epoch 1's checkpoint."""
    save = train.save_checkpoint

    def save_then_die(path, payload):
        save(path, payload)
        if payload["epoch"] == 1:
            raise Killed

    monkeypatch.setattr(train, "save_checkpoint", save_then_die)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    cfg = load_config(None, overrides(tmp, tmp / "run"))
    execute("data", cfg)
    with pytest.MonkeyPatch.context() as monkeypatch:
        kill_after_first_epoch(monkeypatch)
        with pytest.raises(Killed):
            execute("train-cls", cfg)
    staged = staging_folder(stage_folder("train-cls", cfg), settings_hash("train-cls", cfg))
    killed = train.load_checkpoint(staged / "last.pt")
    train_output = torchrun(tmp, "train-cls", tmp / "run")
    shutil.copytree(tmp / "run", tmp / "single")
    single_cfg = load_config(None, overrides(tmp, tmp / "single"))
    execute("cams", single_cfg)
    torchrun(tmp, "cams", tmp / "run")
    return {"tmp": tmp, "cfg": cfg, "single_cfg": single_cfg, "killed": killed,
            "train_output": train_output}


def test_torchrun_training_resumes_a_killed_run_and_rank_0_writes_one_checkpoint(run):
    folder = run["tmp"] / "run" / "classifier"
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST, "model.pt"]
    assert "train-cls: resuming after epoch 1" in run["train_output"]
    manifest = read_json(folder / MANIFEST)
    assert set(manifest) == MANIFEST_KEYS
    assert manifest["hash"] == stage_hash("train-cls", run["cfg"])
    metrics = manifest["metrics"]
    assert metrics["epochs_run"] == 2 and len(metrics["train_loss"]) == 2
    assert metrics["train_loss"][0] == round(run["killed"]["history"][0], 5)
    assert metrics["train_loss"][1] > 0 and 0.0 <= metrics["val_map"] <= 1.0
    model, state = load_classifier(run["tmp"] / "run" / "classifier" / "model.pt")
    assert state["class_names"] == ["square", "disc", "cross"]
    val = VocDataset(run["tmp"] / "data", "val")
    with torch.inference_mode():
        logits = model(normalised_batch([val.image(i) for i in val.ids]))
    assert logits.shape == (8, 3) and torch.isfinite(logits).all()


def test_two_processes_write_exactly_the_cams_of_one(run):
    sharded, single = run["tmp"] / "run" / "cams", run["tmp"] / "single" / "cams"
    names = sorted(p.name for p in single.glob("*.npz"))
    assert len(names) == 40
    assert sorted(p.name for p in sharded.glob("*.npz")) == names
    for name in names:
        with np.load(sharded / name) as got, np.load(single / name) as want:
            assert got.files == want.files
            for key in want.files:
                assert np.array_equal(got[key], want[key]), (name, key)
    manifest = read_json(sharded / MANIFEST)
    assert manifest["hash"] == read_json(single / MANIFEST)["hash"]
    assert manifest["metrics"]["images"] == 40
    assert manifest["files"] == names  # every rank's files, listed by rank 0
    assert [rank["written_now"] for rank in manifest["metrics"]["ranks"]] == [20, 20]
    assert not (sharded / "started.json").exists()


def test_pseudo_shards_of_two_ranks_make_the_masks_of_one(run, monkeypatch):
    """Each rank's share, written in turn as ranks 0 and 1 of 2 would: the same PNGs, byte for byte."""
    cfg, run_dir = run["single_cfg"], run["tmp"] / "single"
    execute("calibrate", cfg)
    execute("pseudo", cfg)
    sharded = run["tmp"] / "pseudo-sharded"
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        monkeypatch.setattr(distributed, "world_size", lambda: 2)
        assert pseudo_stage.run(cfg, sharded, input_paths("pseudo", cfg))["written_now"] == 16
    single = run_dir / "pseudo"
    names = sorted(p.name for p in single.glob("*.png"))
    assert len(names) == 32 and sorted(p.name for p in sharded.glob("*.png")) == names
    for name in names:
        assert (sharded / name).read_bytes() == (single / name).read_bytes(), name


def test_one_process_has_rank_0_of_1_and_every_id():
    ids = [f"img_{i}" for i in range(5)]
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.shard(ids) == ids
    assert distributed.from_main("rank 0 says") == "rank 0 says"
    assert distributed.gather(3) == [3]
    distributed.barrier()  # returns at once without a process group


def test_shards_of_three_ranks_are_disjoint_and_cover_every_id(monkeypatch):
    ids = [f"img_{i}" for i in range(7)]
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    shards = []
    for rank in range(3):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        shards.append(distributed.shard(ids))
    assert shards == [["img_0", "img_3", "img_6"], ["img_1", "img_4"], ["img_2", "img_5"]]


def test_device_choice():
    assert distributed.device("cpu") == torch.device("cpu")
    assert distributed.device("auto") == torch.device("cpu")  # the tests hide CUDA
    with pytest.raises(ValueError, match="device=cuda, but torch sees no CUDA device"):
        distributed.device("cuda")
    with pytest.raises(ValueError, match="device must be one of auto, cpu, cuda, not 'gpu'"):
        distributed.device("gpu")
