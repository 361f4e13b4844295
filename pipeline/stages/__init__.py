"""The stage registry and the one function that runs a stage with manifests and skipping.

A stage is a module of this package, named after the stage (`train-cls`: `train_cls.py`), that
defines:
  OUTPUT(cfg) -> str          its folder under the run directory
  UPSTREAM(cfg) -> list[str]  the stages whose outputs it reads
  SECTION(cfg) -> dict        the config it depends on (beyond what upstream manifests cover)
  run(cfg, out, run_dir) -> dict of metrics
and, unless it is a plain stage (run on rank 0 while the other ranks wait), its KIND:
  "training"  runs on every rank (DistributedDataParallel; rank 0 writes the checkpoints)
  "sharded"   runs on every rank, each writing the files of its share of the images
              (`distributed.shard`); SHARD_FILES is the pattern of the file each image gets
  "summary"   reads every other stage's files: `all` runs it last, and its run takes a fourth
              argument, `stage_folders(cfg)`
and, if the config can switch it off, SWITCH: the dotted key of the boolean that does (e.g.
"affinity.enabled"); `all` and the report leave out a stage that is off, and running it alone
is refused;
and, if its hash must cover other dataset splits than every one the config names (see
`pipeline.data.fingerprint`), DATASET_SPLITS(cfg) -> list[str];
and, if it reads ground-truth masks (to score, or to write the report of the scores), SCORES = True:
`all` leaves it out on a dataset that has none (a labelled image folder), as it does the upper bound.
Adding a stage is its module plus its name in STAGES.

A stage writes into a staging folder beside its folder (`runs.prepare`); its finished result
replaces the folder's previous one (`runs.finish`). Under torchrun, rank 0 alone prepares the
staging folder, writes the manifest and moves the result in. The manifests (and the checkpoints,
which hold the whole config) are the run's record of its settings.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import replace
from pathlib import Path

from pipeline import distributed, runs
from pipeline.config import Config, config_hash, dotted_value
from pipeline.data import has_masks
from pipeline.data.fingerprint import config_splits, fingerprint, remembering
from pipeline.preflight import check_model_settings

log = logging.getLogger("pipeline")

# Every stage, in the order `python -m pipeline all` runs them.
STAGES = ["data", "train-cls", "cams", "eval-cams", "compare-cams", "pseudo", "train-aff", "pseudo-aff",
          "eval-pseudo", "train-seg", "eval-seg", "pseudo-r2", "report"]
KINDS = ("plain", "training", "sharded", "summary")
# The fully supervised upper bound: these stages again on the same config with seg.labels=gt.
UPPER_BOUND = ["train-seg", "eval-seg"]
# The second round (round2.enabled): these stages again with seg.labels=round2, on the masks
# pseudo-r2 made from the first round's segmenter.
ROUND_TWO = ["eval-pseudo", "train-seg", "eval-seg"]


def module(name: str):
    return importlib.import_module(f"{__name__}.{name.replace('-', '_')}")


def kind(name: str) -> str:
    declared = getattr(module(name), "KIND", "plain")
    if declared not in KINDS:
        raise ValueError(f"stage '{name}': KIND '{declared}' is none of {', '.join(KINDS)}")
    return declared


def switch(name: str) -> str | None:
    return getattr(module(name), "SWITCH", None)


def enabled(name: str, cfg: Config) -> bool:
    key = switch(name)
    return key is None or bool(dotted_value(cfg, key))


def scores(name: str) -> bool:
    return bool(getattr(module(name), "SCORES", False))


def runnable(names: list[str], cfg: Config) -> list[str]:
    """Those of `names` that are on in `cfg` and, on a dataset without masks, score nothing."""
    masks = has_masks(cfg.data)
    return [name for name in names if enabled(name, cfg) and (masks or not scores(name))]


def pipeline_stages(cfg: Config) -> list[str]:
    """The stages `all` runs before the upper bound, in order: every runnable stage but the
    summaries."""
    return [name for name in runnable(STAGES, cfg) if kind(name) != "summary"]


def upper_bound_config(cfg: Config) -> Config:
    return replace(cfg, seg=replace(cfg.seg, labels="gt"))


def round_two_config(cfg: Config) -> Config:
    return replace(cfg, seg=replace(cfg.seg, labels="round2"))


def reruns(cfg: Config) -> list[tuple[str, str, Config, list[str]]]:
    """The stages `all` runs again after the pipeline's, on other configs, in order: (the name
    a summary shows them under, the suffix of their manifests' keys, the config, the stages)."""
    second = [("round-2", "r2", round_two_config(cfg), runnable(ROUND_TWO, cfg))] if cfg.round2.enabled else []
    upper = [("upper-bound", "gt", upper_bound_config(cfg), UPPER_BOUND)] if has_masks(cfg.data) else []
    return [*second, *upper]


def stage_folder(name: str, cfg: Config) -> Path:
    return Path(cfg.run_dir) / module(name).OUTPUT(cfg)


def stage_folders(cfg: Config) -> dict[str, Path]:
    """The folder of every stage a summary covers, by the name it shows: the pipeline's stages,
    then those of its reruns, as "round-2 <stage>" and "upper-bound <stage>"."""
    folders = {name: stage_folder(name, cfg) for name in pipeline_stages(cfg)}
    for shown, _, config, names in reruns(cfg):
        folders.update({f"{shown} {name}": stage_folder(name, config) for name in names})
    return folders


def settings_hash(name: str, cfg: Config) -> str:
    """Hash of the stage's own config section and of the manifests it reads from: the name of the
    staging folder it runs in, so that a killed run, or one stopped by bad images, resumes there
    once they are fixed."""
    stage = module(name)
    upstream = {}
    for parent in stage.UPSTREAM(cfg):
        manifest = runs.load_manifest(stage_folder(parent, cfg))
        if manifest is None:
            raise runs.StageError(f"{stage_folder(parent, cfg)}: no finished '{parent}' stage here; "
                                  f"run `python -m pipeline {parent}` (or `make {parent}`) first")
        upstream[parent] = manifest["hash"]
    return config_hash({"stage": name, "config": stage.SECTION(cfg), "upstream": upstream})


def dataset_splits(name: str, cfg: Config) -> list[str]:
    """The dataset splits whose files the stage's hash covers: every split the config names,
    unless the stage says otherwise."""
    return getattr(module(name), "DATASET_SPLITS", config_splits)(cfg)


def with_dataset(settings: str, name: str, cfg: Config) -> str:
    """The stage's hash: its `settings_hash` and the content of the dataset splits it reads."""
    splits = dataset_splits(name, cfg)
    return config_hash({"settings": settings, "dataset": fingerprint(cfg.data, splits) if splits else None})


def stage_hash(name: str, cfg: Config) -> str:
    """What a finished stage's manifest must hold for the stage to be up to date."""
    return with_dataset(settings_hash(name, cfg), name, cfg)


def run_on_ranks(name: str, cfg: Config, folder: Path) -> dict | None:
    """The stage's metrics, run on the ranks it uses; None on ranks that only wait."""
    stage, how, args = module(name), kind(name), (cfg, folder, Path(cfg.run_dir))
    if how in ("plain", "summary"):
        if not distributed.is_main():
            return None
        return stage.run(*args, stage_folders(cfg)) if how == "summary" else stage.run(*args)
    metrics = stage.run(*args)
    if how == "sharded" and distributed.world_size() > 1:
        per_rank = distributed.gather(metrics)  # returns once every rank has written its files
        metrics = {"images": len(list(folder.glob(stage.SHARD_FILES))), "ranks": per_rank}
    return metrics


def execute(name: str, cfg: Config, force: bool = False) -> dict:
    """Run one stage unless its manifest already matches; returns the stage's manifest (under
    torchrun, on every rank, the one rank 0 wrote)."""
    check_model_settings(cfg)
    if not enabled(name, cfg):
        raise runs.StageError(f"stage '{name}' is off in this config; run it with {switch(name)}=true")
    distributed.init(cfg.device)
    stage = module(name)
    folder = stage_folder(name, cfg)
    settings = settings_hash(name, cfg)
    digest = with_dataset(settings, name, cfg)
    if distributed.is_main():
        runs.settle(folder, settings)
    if distributed.from_main(not force and runs.is_done(folder, digest)):
        log.info("%s: up to date (%s), skipped", name, folder)
        return runs.load_manifest(folder)
    staging = runs.staging_folder(folder, settings)
    if distributed.is_main():
        runs.prepare(folder, settings)
        log.info("%s: running -> %s (in %s until it finishes)", name, folder, staging.name)
    distributed.barrier()  # no rank writes to the staging folder before rank 0 has made it
    runs.reset_peak_rss()
    with runs.Timer() as timer:
        metrics = run_on_ranks(name, cfg, staging)
    if not distributed.is_main():
        distributed.barrier()  # until rank 0 has written the manifest and moved the result in
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
    manifest = runs.finish(folder, staging, manifest)
    log.info("%s: done in %.1f s", name, timer.seconds)
    distributed.barrier()
    return manifest


def execute_all(cfg: Config, force: bool = False) -> dict[str, dict]:
    """Every stage of `cfg` (each skipped when up to date), those of its reruns (the second
    round's, the upper bound's), then the summaries; their manifests by stage name, the reruns'
    as "<stage> r2" and "<stage> gt". On a dataset without masks, what would score is left out."""
    if not has_masks(cfg.data):
        log.info("%s has no masks: `all` leaves out the stages that score against them (%s) and the "
                 "upper bound", cfg.data.root, ", ".join(name for name in STAGES if scores(name)))
    with remembering():
        manifests = {name: execute(name, cfg, force) for name in pipeline_stages(cfg)}
        for _, suffix, config, names in reruns(cfg):
            manifests.update({f"{name} {suffix}": execute(name, config, force) for name in names})
        manifests.update({name: execute(name, cfg, force) for name in runnable(STAGES, cfg)
                          if kind(name) == "summary"})
    return manifests
