"""Collect every stage's results into one flat summary and render it as Markdown and HTML."""
from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

from pipeline import runs
from pipeline.config import Config
from pipeline.report import figures

# A class below this IoU in any stage is named in the report's warnings: it is near collapse.
WEAK_IOU = 0.2
COMPOSED_NOTE = ("The built-in benchmark's scenes are composed (Fashion-MNIST items pasted onto crops "
                 "of photos) and its masks are derived from the items' grey levels, not drawn by people.")


SUMMARY = "summary.json"  # the report stage's output "summary"


def _read(path: Path | None) -> dict | None:
    """A stage's results (or manifest); None for a stage the run leaves out."""
    return runs.read_json(path) if path is not None else None


def fusion_gain(compare: dict | None, method: str, last_layer: str) -> dict:
    """`method`'s best multi-layer fusion against `last_layer` alone, from the side-by-side
    comparison (None where it was not run)."""
    rows = [row for row in (compare or {}).get("rows", []) if row["method"] == method]
    alone = next((row for row in rows if row["layers"] == [last_layer]), None)
    fused = max((row for row in rows if len(row["layers"]) > 1), key=lambda row: row["best_miou"],
                default=None)
    if alone is None or fused is None:
        return {"seed_last_layer_miou": None, "seed_fused_best_miou": None,
                "seed_fused_best_layers": None, "seed_fused_gain": None}
    return {"seed_last_layer_miou": alone["best_miou"], "seed_fused_best_miou": fused["best_miou"],
            "seed_fused_best_layers": "+".join(fused["layers"]),
            "seed_fused_gain": round(fused["best_miou"] - alone["best_miou"], 4)}


def comparison_table(compare: dict | None) -> tuple[list[str], list[dict]]:
    """(methods, rows): one row per layer set, {"layers", method: (mIoU, threshold)}."""
    rows = (compare or {}).get("rows", [])
    methods = list(dict.fromkeys(row["method"] for row in rows))
    table: dict[str, dict] = {}
    for row in rows:
        key = "+".join(row["layers"])
        table.setdefault(key, {"layers": key})[row["method"]] = (row["best_miou"], row["best_threshold"])
    return methods, list(table.values())


def per_class_iou(inputs: dict[str, Path | None]) -> dict[str, dict]:
    """Each scored stage's IoU per class (background included), by stage label."""
    pseudo = _read(inputs["pseudo"])
    per_class = {"seeds (best threshold)": _read(inputs["seeds"])["per_class_iou_best"],
                 "pseudo-masks": pseudo["per_class_iou"]}
    if "affinity" in pseudo:
        per_class["affinity pseudo-masks"] = pseudo["affinity"]["per_class_iou"]
    per_class["segmenter"] = _read(inputs["segmenter"])["per_class_iou"]
    optional = {"round-2 pseudo-masks": "pseudo_r2", "round-2 segmenter": "segmenter_r2",
                "upper bound": "upper_bound"}
    for label, name in optional.items():
        results = _read(inputs[name])
        if results:
            per_class[label] = results["per_class_iou"]
    return per_class


def warnings(summary: dict, per_class: dict[str, dict]) -> list[str]:
    """What a reader must not miss, in words: classes near collapse in any stage, a segmenter that
    does not beat the val pseudo-masks it learnt from, and a second round that does not beat the
    first."""
    found = [f"{name}: IoU {iou:.3f} in the {stage} (below {WEAK_IOU})"
             for stage, values in per_class.items() for name, iou in values.items()
             if iou is not None and iou < WEAK_IOU]
    learnt_from = summary["seg_pseudo_val_miou"]
    if learnt_from is not None and summary["seg_miou"] <= learnt_from:
        found.append(f"the segmenter's val mIoU {summary['seg_miou']:.3f} does not beat its val "
                     f"pseudo-masks' ({summary['seg_labels']}) {learnt_from:.3f}"
                     + _out_of_reach(learnt_from, summary.get("seg_upper_bound_miou")))
    # The second round's val pseudo-masks know each image's classes, so they are no mark for a
    # segmenter; the first round's segmenter is.
    if summary["seg_r2_miou"] is not None and summary["seg_r2_miou"] <= summary["seg_miou"]:
        found.append(f"the round-2 segmenter's val mIoU {summary['seg_r2_miou']:.3f} does not beat the "
                     f"first round's {summary['seg_miou']:.3f}")
    return found


def _out_of_reach(mark: float, upper_bound: float | None) -> str:
    """Why a mark above the upper bound is no fault of the pseudo-masks: the val pseudo-masks are
    told each image's classes, a segmenter has to find them, and even one trained on ground truth
    scores below them."""
    if upper_bound is None or upper_bound > mark:
        return ""
    return (f", above the same segmenter trained on ground truth ({upper_bound:.3f}): they know each "
            "image's classes, which a segmenter has to find")


def val_miou(results: dict | None) -> float | None:
    return results["val"]["miou"] if results and "val" in results else None


def mask_scores(prefix: str, results: dict | None) -> dict:
    """The summary keys `<prefix>_miou`, `_precision`, `_coverage` and `_val_miou` of a set of
    pseudo-masks (None where the run has none)."""
    scores = {f"{prefix}_{key}": results[key] if results else None
              for key in ("miou", "precision", "coverage")}
    return {**scores, f"{prefix}_val_miou": val_miou(results)}


def second_round(seg: dict | None, upper: dict | None) -> dict:
    """The summary keys of the second round's segmenter (None where the run has none)."""
    miou = seg["miou"] if seg else None
    return {"seg_r2_miou": miou, "seg_r2_ratio": ratio(miou, upper)}


def ratio(miou: float | None, upper: dict | None) -> float | None:
    """A segmenter's val mIoU over the upper bound's."""
    return round(miou / upper["miou"], 4) if miou is not None and upper and upper["miou"] > 0 else None


# The steps a report shows with their gains: (name, summary key, the key it gains over or None).
STEPS = [("seeds, best threshold (an oracle)", "seed_miou_best", None),
         ("pseudo-masks (train)", "pseudo_miou", "seed_miou_best"),
         ("affinity pseudo-masks (train)", "pseudo_aff_miou", "pseudo_miou"),
         ("round-2 pseudo-masks (train)", "pseudo_r2_miou", "pseudo_miou"),
         ("segmenter (val)", "seg_miou", None),
         ("round-2 segmenter (val)", "seg_r2_miou", "seg_miou")]


def step_gains(summary: dict) -> list[dict]:
    """The steps the run has, each with its mIoU and its gain over the step it refines."""
    rows = []
    for name, key, previous in STEPS:
        if summary[key] is not None:
            gain = None if previous is None else round(summary[key] - summary[previous], 4)
            rows.append({"step": name, "miou": summary[key], "gain": gain})
    return rows


CHOICE_NAMES = {"layers": "seeds' layer set (cam.layers; mIoU at its best threshold)",
                "bg_threshold": "seeds' background (eval.bg_threshold)",
                   "fg_threshold_high": "pseudo-masks' high (pseudo.fg_threshold_high)"}


def calibration(results: dict | None) -> dict | None:
    """eval-calibration's comparison: the calibrated, fixed, oracle and used layer set and value of
    each threshold with its mIoU, and the pseudo-masks' mIoU (eval.split) at the three choices."""
    if results is None:
        return None
    masks = results["fg_threshold_high"]
    unswept = {name: {k: v for k, v in scores.items() if k != "sweep"}
               for name, scores in results.items() if name != "split"}
    return {"pseudo_miou_calibrated": masks["miou_calibrated"], "pseudo_miou_oracle": masks["miou_oracle"],
            "pseudo_miou_fixed": masks["miou_fixed"], "layers": unswept.pop("layers"), "thresholds": unswept}


def calibration_rows(block: dict | None) -> list[tuple[str, dict]]:
    """The report's calibration table: (what is chosen, its choices), the layer set first."""
    if block is None:
        return []
    return [(CHOICE_NAMES[name], choice) for name, choice in {"layers": block["layers"], **block["thresholds"]}.items()]


def stage_seconds(stage_folders: dict[str, Path]) -> dict[str, float]:
    """The wall time of every finished stage among `stage_folders` ({name: folder})."""
    manifests = {stage: runs.load_manifest(folder) for stage, folder in stage_folders.items()}
    return {stage: manifest["seconds"] for stage, manifest in manifests.items() if manifest}


def build_summary(cfg: Config, inputs: dict[str, Path | None], cfg_hash: str,
                  stage_folders: dict[str, Path]) -> dict:
    """The flat summary of the report stage's `inputs`, with the wall time of each stage of
    `stage_folders` ({name: folder}). Keys are a public contract: add new ones, never rename."""
    data = _read(inputs["data"])["metrics"]
    cls = _read(inputs["classifier"])["metrics"]
    seeds = _read(inputs["seeds"])
    pseudo = _read(inputs["pseudo"])
    seg = _read(inputs["segmenter"])
    upper = _read(inputs["upper_bound"])
    seconds = stage_seconds(stage_folders)
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
        **fusion_gain(_read(inputs["comparison"]), seeds["method"], cfg.cam.head_layer),
        "pseudo_miou": pseudo["miou"],
        "pseudo_precision": pseudo["precision"],
        "pseudo_coverage": pseudo["coverage"],
        "pseudo_val_miou": val_miou(pseudo),
        **mask_scores("pseudo_aff", pseudo.get("affinity")),
        "seg_labels": cfg.seg.labels,
        "seg_pseudo_val_miou": val_miou(pseudo.get("affinity") if cfg.seg.labels == "affinity" else pseudo),
        "seg_miou": seg["miou"],
        "seg_upper_bound_miou": upper["miou"] if upper else None,
        "seg_ratio": ratio(seg["miou"], upper),
        **mask_scores("pseudo_r2", _read(inputs["pseudo_r2"])),
        "calibration": calibration(_read(inputs["thresholds"])),
        **second_round(_read(inputs["segmenter_r2"]), upper),
        "git_commit": runs.git_commit(),
        "config_hash": cfg_hash,
        "stage_seconds": seconds,
        "total_seconds": round(sum(seconds.values()), 1),
    }
    summary["warnings"] = warnings(summary, per_class_iou(inputs))
    return summary


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, list):  # a layer set
        return "+".join(map(str, value))
    return str(value)


def write_report(cfg: Config, inputs: dict[str, Path | None], out: Path, summary: dict) -> None:
    runs.write_json(out / SUMMARY, summary)
    figure_dir = out / "figures"
    figure_dir.mkdir(parents=True, exist_ok=True)
    seeds = _read(inputs["seeds"])
    per_class = per_class_iou(inputs)
    figs = {
        "sweep": figures.sweep_curve(seeds["sweep"], summary, figure_dir / "sweep.png"),
        "per_class": figures.per_class_bars(per_class, figure_dir / "per_class.png"),
        "examples": figures.example_grid(cfg, inputs["cams"], inputs["predictions"],
                                         figure_dir / "examples.png"),
    }
    cls = _read(inputs["classifier"])["metrics"]
    compare = _read(inputs["comparison"])
    context = {
        "summary": summary, "fmt": _fmt, "figures": {k: f"figures/{v.name}" for k, v in figs.items()},
        "per_class": per_class, "class_names": ["background", *summary["classes"]], "steps": step_gains(summary),
        "cls_ap": cls["val_ap"], "note": COMPOSED_NOTE if summary["dataset"]["name"] == "fashion-scenes" else "",
        "sweep": seeds["sweep"], "compare": comparison_table(compare),
        "compare_images": compare["images"] if compare else 0, "cam": cfg.cam, "seg": cfg.seg,
        "last_layer": cfg.cam.head_layer, "calibration_rows": calibration_rows(summary["calibration"]),
    }
    env = Environment(loader=PackageLoader("pipeline.report", "templates"), undefined=StrictUndefined,
                      autoescape=False, trim_blocks=True, lstrip_blocks=True)
    runs.write_text(out / "report.md", env.get_template("report.md.j2").render(**context))
    env.autoescape = True
    runs.write_text(out / "index.html", env.get_template("index.html.j2").render(**context))
