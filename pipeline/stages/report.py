"""Stage `report`: `report/summary.json` (flat, stable keys), `report.md`, `index.html`, figures."""
from __future__ import annotations

from pathlib import Path

from pipeline import runs
from pipeline.config import Config, config_hash, to_dict
from pipeline.report.build import build_summary, write_report

KIND = "summary"
UPPER_BOUND = "eval/seg-gt"


def OUTPUT(cfg: Config) -> str:
    return "report"


def UPSTREAM(cfg: Config) -> list[str]:
    return ["data", "train-cls", "eval-cams", "compare-cams", "eval-pseudo", "eval-seg"]


def SECTION(cfg: Config) -> dict:
    # The upper bound is optional (`make upper-bound`); when present it is part of the report.
    upper = runs.load_manifest(Path(cfg.run_dir) / UPPER_BOUND)
    return {"report": to_dict(cfg.report), "upper_bound": upper["hash"] if upper else None}


def run(cfg: Config, out: Path, run_dir: Path, stage_folders: dict[str, Path]) -> dict:
    summary = build_summary(cfg, run_dir, config_hash(to_dict(cfg)), stage_folders)
    write_report(cfg, run_dir, out, summary)
    return {key: summary[key] for key in ("seed_miou_best", "pseudo_miou", "seg_miou", "cls_map")}
