"""The stage registry and the one function that runs a stage with manifests and skipping.

A stage module defines:
  OUTPUT(cfg) -> str          its folder under the run directory
  UPSTREAM(cfg) -> list[str]  the stages whose outputs it reads
  SECTION(cfg) -> dict        the config it depends on (beyond what upstream manifests cover)
  run(cfg, out, run_dir) -> dict of metrics

Under torchrun, rank 0 alone prepares a stage's folder and writes its manifest. The manifests
(and the checkpoints, which hold the whole config) are the run's record of its settings. The trainings run
on every rank (DistributedDataParallel; rank 0 writes the checkpoints), the per-image stages on
every rank, each writing the files of its shard of the images; every other stage runs on rank 0
while the other ranks wait.
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path

from pipeline import distributed, runs
from pipeline.config import Config, config_hash

log = logging.getLogger("pipeline")

STAGES = {
    "data": "data",
    "train-cls": "train_cls",
    "cams": "cams",
    "eval-cams": "eval_cams",
    "compare-cams": "compare_cams",
    "pseudo": "pseudo",
    "eval-pseudo": "eval_pseudo",
    "train-seg": "train_seg",
    "eval-seg": "eval_seg",
    "report": "report",
}
# `python -m pipeline all`: every stage in order in one process (imports once), then the upper
# bound's two with seg.labels=gt, then the report.
PIPELINE = ["data", "train-cls", "cams", "eval-cams", "compare-cams", "pseudo", "eval-pseudo", "train-seg",
            "eval-seg"]
UPPER_BOUND = ["train-seg", "eval-seg"]
TRAININGS = {"train-cls", "train-seg"}
# Per-image stages (they split their images with `distributed.shard`) and the file each image gets.
SHARDED = {"cams": "*.npz", "pseudo": "*.png"}


def module(name: str):
    return importlib.import_module(f"pipeline.stages.{STAGES[name]}")


def stage_folder(name: str, cfg: Config) -> Path:
    return Path(cfg.run_dir) / module(name).OUTPUT(cfg)


def stage_hash(name: str, cfg: Config) -> str:
    """Hash of the stage's own config section and of the manifests it reads from."""
    stage = module(name)
    upstream = {}
    for parent in stage.UPSTREAM(cfg):
        manifest = runs.load_manifest(stage_folder(parent, cfg))
        if manifest is None:
            raise runs.StageError(f"{stage_folder(parent, cfg)}: no finished '{parent}' stage here; "
                                  f"run `python -m pipeline {parent}` (or `make {parent}`) first")
        upstream[parent] = manifest["hash"]
    return config_hash({"stage": name, "config": stage.SECTION(cfg), "upstream": upstream})


def run_on_ranks(name: str, cfg: Config, folder: Path) -> dict | None:
    """The stage's metrics, run on the ranks it uses; None on ranks that only wait."""
    if name not in TRAININGS and name not in SHARDED:
        return module(name).run(cfg, folder, Path(cfg.run_dir)) if distributed.is_main() else None
    metrics = module(name).run(cfg, folder, Path(cfg.run_dir))
    if name in SHARDED and distributed.world_size() > 1:
        per_rank = distributed.gather(metrics)  # returns once every rank has written its files
        metrics = {"images": len(list(folder.glob(SHARDED[name]))), "ranks": per_rank}
    return metrics


def execute(name: str, cfg: Config, force: bool = False) -> dict:
    """Run one stage unless its manifest already matches; returns the stage's manifest (under
    torchrun, on every rank, the one rank 0 wrote)."""
    distributed.init(cfg.device)
    stage = module(name)
    folder = stage_folder(name, cfg)
    digest = stage_hash(name, cfg)
    if distributed.from_main(not force and runs.is_done(folder, digest)):
        log.info("%s: up to date (%s), skipped", name, folder)
        return runs.load_manifest(folder)
    if distributed.is_main():
        runs.prepare(folder, digest)
        log.info("%s: running -> %s", name, folder)
    distributed.barrier()  # no rank reads the folder while rank 0 may still be emptying it
    runs.reset_peak_rss()
    with runs.Timer() as timer:
        metrics = run_on_ranks(name, cfg, folder)
    if not distributed.is_main():
        distributed.barrier()  # until rank 0 has written the manifest
        return runs.load_manifest(folder)
    manifest = {
        "stage": name,
        "hash": digest,
        "config": stage.SECTION(cfg),
        "upstream": stage.UPSTREAM(cfg),
        "seconds": round(timer.seconds, 2),
        "peak_rss_mib": runs.peak_rss_mib(),
        "git_commit": runs.git_commit(),
        "packages": runs.package_versions(),
        "metrics": metrics,
    }
    runs.finish(folder, manifest)
    log.info("%s: done in %.1f s", name, timer.seconds)
    distributed.barrier()
    return manifest


def execute_all(cfg: Config, upper_bound: Config, force: bool = False) -> dict[str, dict]:
    """Every stage of `cfg` (each skipped when up to date), the upper bound's on `upper_bound`
    (the same config with seg.labels=gt), then the report; their manifests by stage name, the
    upper bound's as "<stage> gt"."""
    manifests = {name: execute(name, cfg, force) for name in PIPELINE}
    manifests.update({f"{name} gt": execute(name, upper_bound, force) for name in UPPER_BOUND})
    manifests["report"] = execute("report", cfg, force)
    return manifests
