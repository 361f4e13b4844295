"""Stage `report`: `report/summary.json` (flat, stable keys), `report.md`, `index.html`, figures."""
from __future__ import annotations

from pathlib import Path

from pipeline import runs
from pipeline.config import Config, config_hash, to_dict
from pipeline.report.build import build_summary, write_report

KIND = "summary"
SCORES = True  # a report of the scores
# Scores a run may lack (the upper bound, `make upper-bound`; the second round, round2.enabled):
# those present are part of the report.
OPTIONAL = ("eval/seg-gt", "eval/pseudo-r2", "eval/seg-r2")


def OUTPUT(cfg: Config) -> str:
    return "report"


def UPSTREAM(cfg: Config) -> list[str]:
    return ["data", "train-cls", "eval-cams", "compare-cams", "eval-pseudo", "eval-seg"]


def SECTION(cfg: Config) -> dict:
    manifests = {folder: runs.load_manifest(Path(cfg.run_dir) / folder) for folder in OPTIONAL}
    return {"report": to_dict(cfg.report),
            "optional": {folder: manifest["hash"] for folder, manifest in manifests.items() if manifest}}


def run(cfg: Config, out: Path, run_dir: Path, stage_folders: dict[str, Path]) -> dict:
    summary = build_summary(cfg, run_dir, config_hash(to_dict(cfg)), stage_folders)
    write_report(cfg, run_dir, out, summary)
    return {key: summary[key] for key in ("seed_miou_best", "pseudo_miou", "seg_miou", "cls_map")}
