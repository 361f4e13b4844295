"""Collect every stage's results into one flat summary and render it as Markdown and HTML."""
from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

from pipeline import runs
from pipeline.config import Config
from pipeline.report import figures

STAGE_FOLDERS = {"data": "data", "train-cls": "classifier", "cams": "cams", "eval-cams": "eval/cams",
                 "pseudo": "pseudo", "eval-pseudo": "eval/pseudo", "train-seg": "segmenter",
                 "eval-seg": "eval/seg", "upper-bound train-seg": "segmenter-gt",
                 "upper-bound eval-seg": "eval/seg-gt"}
COMPOSED_NOTE = ("The built-in benchmark's scenes are composed (Fashion-MNIST items pasted onto crops "
                 "of photos) and its masks are derived from the items' grey levels, not drawn by people.")


def _results(run_dir: Path, folder: str) -> dict | None:
    path = run_dir / folder / "results.json"
    return runs.read_json(path) if path.is_file() else None


def build_summary(cfg: Config, run_dir: Path, cfg_hash: str) -> dict:
    """The flat summary. Keys are a public contract: add new ones, never rename."""
    data = runs.load_manifest(run_dir / "data")["metrics"]
    cls = runs.load_manifest(run_dir / "classifier")["metrics"]
    seeds = _results(run_dir, "eval/cams")
    pseudo = _results(run_dir, "eval/pseudo")
    seg = _results(run_dir, "eval/seg")
    upper = _results(run_dir, "eval/seg-gt")
    seconds = {}
    for stage, folder in STAGE_FOLDERS.items():
        manifest = runs.load_manifest(run_dir / folder)
        if manifest:
            seconds[stage] = manifest["seconds"]
    summary = {
        "dataset": {"name": data["name"], "seed": data["seed"], "sizes": data["sizes"]},
        "classes": data["classes"],
        "cls_map": cls["val_map"],
        "seed_method": seeds["method"],
        "seed_layers": "+".join(seeds["layers"]),
        "seed_miou_best": seeds["best_miou"],
        "seed_threshold_best": seeds["best_threshold"],
        "seed_miou_configured": seeds["configured_miou"],
        "seed_threshold_configured": seeds["configured_threshold"],
        "baseline_background_miou": seeds["baseline_background_miou"],
        "baseline_fill_miou": seeds["baseline_fill_miou"],
        "pseudo_miou": pseudo["miou"],
        "pseudo_precision": pseudo["precision"],
        "pseudo_coverage": pseudo["coverage"],
        "seg_miou": seg["miou"],
        "seg_upper_bound_miou": upper["miou"] if upper else None,
        "seg_ratio": round(seg["miou"] / upper["miou"], 4) if upper and upper["miou"] > 0 else None,
        "git_commit": runs.git_commit(),
        "config_hash": cfg_hash,
        "stage_seconds": seconds,
        "total_seconds": round(sum(seconds.values()), 1),
    }
    return summary


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def write_report(cfg: Config, run_dir: Path, out: Path, summary: dict) -> None:
    runs.write_json(out / "summary.json", summary)
    figure_dir = out / "figures"
    figure_dir.mkdir(parents=True, exist_ok=True)
    seeds = _results(run_dir, "eval/cams")
    per_class = {"seeds (best threshold)": seeds["per_class_iou_best"],
                 "pseudo-masks": _results(run_dir, "eval/pseudo")["per_class_iou"],
                 "segmenter": _results(run_dir, "eval/seg")["per_class_iou"]}
    upper = _results(run_dir, "eval/seg-gt")
    if upper:
        per_class["upper bound"] = upper["per_class_iou"]
    figs = {
        "sweep": figures.sweep_curve(seeds["sweep"], summary, figure_dir / "sweep.png"),
        "per_class": figures.per_class_bars(per_class, figure_dir / "per_class.png"),
        "examples": figures.example_grid(cfg, run_dir, figure_dir / "examples.png"),
    }
    cls = runs.load_manifest(run_dir / "classifier")["metrics"]
    context = {
        "summary": summary, "fmt": _fmt, "figures": {k: f"figures/{v.name}" for k, v in figs.items()},
        "per_class": per_class, "class_names": ["background", *summary["classes"]],
        "cls_ap": cls["val_ap"], "note": COMPOSED_NOTE if summary["dataset"]["name"] == "fashion-scenes" else "",
        "sweep": seeds["sweep"],
    }
    env = Environment(loader=PackageLoader("pipeline.report", "templates"), undefined=StrictUndefined,
                      autoescape=False, trim_blocks=True, lstrip_blocks=True)
    runs.write_text(out / "report.md", env.get_template("report.md.j2").render(**context))
    env.autoescape = True
    runs.write_text(out / "index.html", env.get_template("index.html.j2").render(**context))
