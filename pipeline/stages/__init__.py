"""The stage registry: what each stage writes and reads, by name, turned into paths; and the one
function that runs a stage with manifests and skipping.

A stage is a module of this package, named after the stage (`train-cls`: `train_cls.py`), that
declares:
  FOLDER            its folder under the run directory
  OUTPUTS           what it writes, by name: {name: path under its folder} ("." for the folder
                    itself); every stage also has the output "manifest", its manifest.json
  INPUTS            what it reads, by name: {name: (stage, that stage's output)}, or INPUTS(cfg)
                    returning that where settings choose the inputs; no stage spells another's path
  KEYS              the config keys its results depend on: sections ("cls") or dotted keys
                    ("seg.epochs"); its hash covers exactly these and the hashes of the stages it reads
  run(cfg, out, inputs) -> dict of metrics: `out` is the folder to write into, `inputs` the path
                    of each input, None for one whose stage is off in `cfg` (see `is_on`)
and, unless it is a plain stage (run on rank 0 while the other ranks wait), its KIND:
  "training"  runs on every rank (DistributedDataParallel; rank 0 writes the checkpoints)
  "sharded"   runs on every rank, each writing the files of its share of the images
              (`distributed.shard`); SHARD_FILES is the pattern of the file each image gets
  "summary"   reads every other stage's files: `all` runs it last, and its run takes a fourth
              argument, `stage_folders(cfg)`
and, if the config can switch it off, SWITCH: the dotted key of the boolean that does (e.g.
"affinity.enabled"); `all` and the report leave out a stage that is off, and running it alone
is refused;
and, if it reads the dataset's ground-truth masks (to score, to train the upper bound, or to
report the scores), GROUND_TRUTH = True: `all` leaves it out on a dataset that has none (a
labelled image folder);
and, if its hash must cover other dataset splits than every one the config names (see
`pipeline.data.fingerprint`), DATASET_SPLITS(cfg) -> list[str];
and, if the same run on other inputs makes further stages, VARIANTS: {suffix: the declarations
in which the stage "<name>-<suffix>" differs} (train-seg's "gt" is the stage `train-seg-gt`).
Adding a stage is its module (or a variant) plus its name in STAGES.

A stage writes into a staging folder beside its folder (`runs.prepare`); its finished result
replaces the folder's previous one (`runs.finish`). Under torchrun, rank 0 alone prepares the
staging folder, writes the manifest and moves the result in. The manifests (and the checkpoints,
which hold the whole config) are the run's record of its settings.
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path
from types import SimpleNamespace

from pipeline import distributed, runs
from pipeline.config import Config, config_hash, dotted_value, selected
from pipeline.data import has_masks
from pipeline.data.fingerprint import config_splits, fingerprint, remembering
from pipeline.preflight import model_settings

log = logging.getLogger("pipeline")

# Every stage, in the order `python -m pipeline all` runs them: the first round, the second
# (round2.enabled), the fully supervised upper bound (on a dataset with masks), the report.
STAGES = ["data", "train-cls", "cams", "calibrate", "eval-cams", "compare-cams", "pseudo", "train-aff",
          "pseudo-aff", "eval-pseudo", "eval-calibration", "train-seg", "eval-seg", "pseudo-r2", "eval-pseudo-r2",
          "train-seg-r2", "eval-seg-r2", "train-seg-gt", "eval-seg-gt", "report"]
KINDS = ("plain", "training", "sharded", "summary")


def module(name: str):
    """The stage's declarations: its module or, for a variant (`train-seg-gt`), the module of the
    stage it varies with the variant's declarations in place of its own."""
    own = f"{__name__}.{name.replace('-', '_')}"
    try:
        return importlib.import_module(own)
    except ModuleNotFoundError as missing:
        if missing.name != own or "-" not in name:
            raise
    base, _, suffix = name.rpartition("-")
    declared = module(base)
    return SimpleNamespace(**{**vars(declared), **declared.VARIANTS[suffix]})


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


def ground_truth(name: str) -> bool:
    return bool(getattr(module(name), "GROUND_TRUTH", False))


def is_on(name: str, cfg: Config) -> bool:
    """Whether `cfg` runs the stage: switched on and, on a dataset without masks, reading none."""
    return enabled(name, cfg) and (has_masks(cfg.data) or not ground_truth(name))


def pipeline_stages(cfg: Config) -> list[str]:
    """The stages `all` runs before the summaries, in order."""
    return [name for name in STAGES if is_on(name, cfg) and kind(name) != "summary"]


def stage_folder(name: str, cfg: Config) -> Path:
    return Path(cfg.run_dir) / module(name).FOLDER


def output_path(run_dir: Path, name: str, output: str) -> Path:
    """Where the stage's output of that name lies in the run folder `run_dir`."""
    declared = module(name)
    outputs = {**declared.OUTPUTS, "manifest": runs.MANIFEST}
    if output not in outputs:
        raise KeyError(f"stage '{name}' has no output '{output}' (its outputs: {', '.join(outputs)})")
    return Path(run_dir) / declared.FOLDER / outputs[output]


def run_outputs(run_dir: Path) -> runs.RunOutputs:
    return runs.RunOutputs(Path(run_dir), output_path)


def declared_inputs(name: str, cfg: Config) -> dict[str, tuple[str, str]]:
    inputs = module(name).INPUTS
    return inputs(cfg) if callable(inputs) else inputs


def input_paths(name: str, cfg: Config) -> dict[str, Path | None]:
    """The path of each of the stage's inputs in `cfg`'s run; None where its stage is off."""
    return {key: output_path(cfg.run_dir, stage, output) if is_on(stage, cfg) else None
            for key, (stage, output) in declared_inputs(name, cfg).items()}


def upstream(name: str, cfg: Config) -> list[str]:
    """The stages whose outputs the stage reads in `cfg`, in the order it names them."""
    return list(dict.fromkeys(stage for stage, _ in declared_inputs(name, cfg).values() if is_on(stage, cfg)))


def stage_folders(cfg: Config) -> dict[str, Path]:
    """The folder of every stage a summary covers, by name."""
    return {name: stage_folder(name, cfg) for name in pipeline_stages(cfg)}


def settings(name: str, cfg: Config) -> dict:
    """The values of the config keys the stage declares it uses, as the stage runs them: with the
    keys `cfg` leaves to the backbone filled, so that its hash is the same either way."""
    return selected(model_settings(cfg), module(name).KEYS)


def settings_hash(name: str, cfg: Config) -> str:
    """Hash of the stage's settings and of the manifests it reads from: the name of the staging
    folder it runs in, so that a killed run, or one stopped by bad images, resumes there once
    they are fixed."""
    hashes = {}
    for parent in upstream(name, cfg):
        manifest = runs.load_manifest(stage_folder(parent, cfg))
        if manifest is None:
            raise runs.StageError(f"{stage_folder(parent, cfg)}: no finished '{parent}' stage here; "
                                  f"run `python -m pipeline {parent}` (or `make {parent}`) first")
        hashes[parent] = manifest["hash"]
    return config_hash({"stage": name, "config": settings(name, cfg), "upstream": hashes})


def dataset_splits(name: str, cfg: Config) -> list[str]:
    """The dataset splits whose files the stage's hash covers: every split the config names,
    unless the stage says otherwise."""
    return getattr(module(name), "DATASET_SPLITS", config_splits)(cfg)


def with_dataset(settings_digest: str, name: str, cfg: Config) -> str:
    """The stage's hash: its `settings_hash` and the content of the dataset splits it reads."""
    splits = dataset_splits(name, cfg)
    return config_hash({"settings": settings_digest, "dataset": fingerprint(cfg.data, splits) if splits else None})


def stage_hash(name: str, cfg: Config) -> str:
    """What a finished stage's manifest must hold for the stage to be up to date."""
    return with_dataset(settings_hash(name, cfg), name, cfg)


def run_on_ranks(name: str, cfg: Config, folder: Path) -> dict | None:
    """The stage's metrics, run on the ranks it uses; None on ranks that only wait."""
    stage, how, args = module(name), kind(name), (cfg, folder, input_paths(name, cfg))
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
    cfg = model_settings(cfg)
    if not enabled(name, cfg):
        raise runs.StageError(f"stage '{name}' is off in this config; run it with {switch(name)}=true")
    distributed.init(cfg.device)
    folder = stage_folder(name, cfg)
    settings_digest = settings_hash(name, cfg)
    digest = with_dataset(settings_digest, name, cfg)
    if distributed.is_main():
        runs.settle(folder, settings_digest)
    if distributed.from_main(not force and runs.is_done(folder, digest)):
        log.info("%s: up to date (%s), skipped", name, folder)
        return runs.load_manifest(folder)
    staging = runs.staging_folder(folder, settings_digest)
    if distributed.is_main():
        runs.prepare(folder, settings_digest)
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
        "config": settings(name, cfg),
        "upstream": upstream(name, cfg),
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
    """Every stage `cfg` runs (each skipped when up to date), the summaries last; their manifests
    by stage name. On a dataset without masks, what would read them is left out."""
    if not has_masks(cfg.data):
        log.info("%s has no masks: `all` leaves out the stages that read them (%s)", cfg.data.root,
                 ", ".join(name for name in STAGES if ground_truth(name)))
    with remembering():
        manifests = {name: execute(name, cfg, force) for name in pipeline_stages(cfg)}
        manifests.update({name: execute(name, cfg, force) for name in STAGES
                          if is_on(name, cfg) and kind(name) == "summary"})
    return manifests
