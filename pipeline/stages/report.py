"""Stage `report`: `report/summary.json` (flat, stable keys), `report.md`, `index.html`, figures."""
from __future__ import annotations

from pathlib import Path

from pipeline.config import Config, config_hash, to_dict
from pipeline.refine.calibration import with_choices
from pipeline.report.build import SUMMARY, build_summary, write_report

KIND = "summary"
GROUND_TRUTH = True  # a report of the scores
FOLDER = "report"
OUTPUTS = {"summary": SUMMARY}
# The second round's scores are None where it is off.
INPUTS = {"data": ("data", "manifest"), "classifier": ("train-cls", "manifest"), "cams": ("cams", "seeds"),
          "seeds": ("eval-cams", "results"), "comparison": ("compare-cams", "results"),
          "pseudo": ("eval-pseudo", "results"), "segmenter": ("eval-seg", "results"),
          "predictions": ("eval-seg", "predictions"), "pseudo_r2": ("eval-pseudo-r2", "results"),
          "segmenter_r2": ("eval-seg-r2", "results"), "upper_bound": ("eval-seg-gt", "results"),
          "calibration": ("calibrate", "choices"), "thresholds": ("eval-calibration", "results")}
KEYS = ("report",)


def run(cfg: Config, out: Path, inputs: dict, stage_folders: dict[str, Path]) -> dict:
    summary = build_summary(cfg, inputs, config_hash(to_dict(cfg)), stage_folders)
    write_report(with_choices(cfg, inputs["calibration"]), inputs, out, summary)
    return {key: summary[key] for key in ("seed_miou_best", "pseudo_miou", "seg_miou", "cls_map")}
