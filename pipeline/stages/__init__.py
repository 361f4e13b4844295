"""The stage registry and the one function that runs a stage with manifests and skipping.

A stage module defines:
  OUTPUT(cfg) -> str          its folder under the run directory
  UPSTREAM(cfg) -> list[str]  the stages whose outputs it reads
  SECTION(cfg) -> dict        the config it depends on (beyond what upstream manifests cover)
  run(cfg, out, run_dir) -> dict of metrics
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path

from pipeline import runs
from pipeline.config import Config, config_hash, save_yaml

log = logging.getLogger("pipeline")

STAGES = {
    "data": "data",
    "train-cls": "train_cls",
    "cams": "cams",
    "eval-cams": "eval_cams",
    "pseudo": "pseudo",
    "eval-pseudo": "eval_pseudo",
    "train-seg": "train_seg",
    "eval-seg": "eval_seg",
    "report": "report",
}


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


def execute(name: str, cfg: Config, force: bool = False) -> dict:
    """Run one stage unless its manifest already matches; returns the stage's manifest."""
    stage = module(name)
    folder = stage_folder(name, cfg)
    digest = stage_hash(name, cfg)
    if not force and runs.is_done(folder, digest):
        log.info("%s: up to date (%s), skipped", name, folder)
        return runs.load_manifest(folder)
    runs.prepare(folder, digest)
    save_yaml(cfg, Path(cfg.run_dir) / "config.yaml")
    log.info("%s: running -> %s", name, folder)
    with runs.Timer() as timer:
        metrics = stage.run(cfg, folder, Path(cfg.run_dir))
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
    return manifest
