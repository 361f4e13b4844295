"""Whole-pipeline seeds: `python -m pipeline all` (classifier, seeds, pseudo-masks, both
segmenters, report) once per seed, then every headline number's mean, spread and worst seed.

Seed 0 runs in `--run` (what `make` runs, so `make bench` after `make` reuses it), seed s > 0 in
`<run>-seed<s>`; the dataset is shared (it is a function of `data.seed`, not of the pipeline's
seed). Each seed runs in its own process, so a killed bench resumes stage by stage. Prints a
Markdown table and writes bench/out/seeds.json and bench/out/seeds.md.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

from pipeline.runs import git_commit, read_json
from pipeline.stages import output_path
from bench_out import save

# Higher is better for each, so a seed's worst is its minimum.
HEADLINE = ["cls_map", "seed_miou_best", "pseudo_miou", "pseudo_val_miou", "pseudo_aff_miou",
            "pseudo_aff_val_miou", "seg_miou", "pseudo_r2_miou", "pseudo_r2_val_miou", "seg_r2_miou",
            "seg_upper_bound_miou", "seg_ratio", "seg_r2_ratio", "seg_minus_val_pseudo", "seg_min_class_iou",
            "pseudo_min_class_iou", "pseudo_aff_min_class_iou", "pseudo_r2_min_class_iou",
            "seg_r2_min_class_iou", "pseudo_miou_fixed", "pseudo_miou_oracle", "calibrated_to_oracle"]


def results_of(run: Path, stage: str) -> dict | None:
    """A scoring stage's results in a run; None where the run lacks the stage."""
    path = output_path(run, stage, "results")
    return read_json(path) if path.is_file() else None


def optional_lowest(run: Path, stage: str, section: str | None = None) -> float | None:
    """`lowest_class_iou` of a stage's results (or of one of their sections) the run may lack."""
    results = results_of(run, stage)
    if section is not None:
        results = results.get(section)
    return lowest_class_iou(results) if results else None


# The pipeline's steps, each scored per class: (name, the stage that scores it, section of its
# results or None, the step its gain is measured from or None). Seeds and pseudo-masks are
# scored on the train split, segmenters on val.
STEPS = [("seeds, best threshold (oracle)", "eval-cams", None, None),
         ("pseudo-masks: seeds + CRF + band", "eval-pseudo", None, "seeds, best threshold (oracle)"),
         ("affinity pseudo-masks: walked seeds + CRF + band", "eval-pseudo", "affinity",
          "pseudo-masks: seeds + CRF + band"),
         ("round-2 pseudo-masks: segmenter, known classes + CRF + band", "eval-pseudo-r2", None,
          "pseudo-masks: seeds + CRF + band"),
         ("segmenter", "eval-seg", None, None),
         ("round-2 segmenter", "eval-seg-r2", None, "segmenter"),
         ("upper bound", "eval-seg-gt", None, None)]


def step_scores(run: Path) -> dict[str, dict]:
    """Each step's mIoU and per-class IoU in one seed's run, by step name (steps it lacks left out)."""
    found = {}
    for name, stage, section, _ in STEPS:
        results = results_of(run, stage)
        results = results.get(section) if results and section else results
        if results:
            per_class = results.get("per_class_iou") or results["per_class_iou_best"]
            found[name] = {"miou": results.get("miou", results.get("best_miou")), **per_class}
    return found


def signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.3f}"


def step_table(per_seed: list[dict[str, dict]]) -> tuple[dict, str]:
    """Per step, the mean over seeds of its mIoU and of each class's IoU, the worst seed's, and
    the mean gain over the step it follows; as data and as a Markdown table."""
    steps = [step for step in STEPS if all(step[0] in scores for scores in per_seed)]
    keys = list(per_seed[0][steps[0][0]]) if steps else []
    data = {}
    for name, _, _, previous in steps:
        values = {key: [scores[name][key] for scores in per_seed] for key in keys}
        gains = ([scores[name]["miou"] - scores[previous]["miou"] for scores in per_seed]
                 if previous in {step[0] for step in steps} else None)
        data[name] = {"mean": {k: round(statistics.mean(v), 4) for k, v in values.items()},
                      "worst": {k: min(v) for k, v in values.items()},
                      "gain": round(statistics.mean(gains), 4) if gains else None}
    header = ["step", "gain", *keys]
    rows = [f"| {name} | {signed(row['gain'])} | "
            + " | ".join(f"{row['mean'][k]:.3f} ({row['worst'][k]:.3f})" for k in keys) + " |"
            for name, row in data.items()]
    text = "\n".join([f"| {' | '.join(header)} |", "|" + "---|" * len(header), *rows])
    return data, text


def seed_run(run: Path, seed: int) -> Path:
    return run if seed == 0 else run.parent / f"{run.name}-seed{seed}"


def run_pipeline(config: str, run: Path, seed: int, overrides: list[str]) -> None:
    command = [sys.executable, "-m", "pipeline", "all", "--config", config, f"run_dir={run}",
               f"seed={seed}", *overrides]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                             "NO_ALBUMENTATIONS_UPDATE": "1"})


def lowest_class_iou(results: dict) -> float:
    """The lowest IoU of a present class (background excluded) in a stage's results."""
    values = [v for name, v in results["per_class_iou"].items()
              if name != "background" and v is not None and not math.isnan(v)]
    return min(values)


def seed_numbers(run: Path) -> dict:
    summary = read_json(output_path(run, "report", "summary"))
    numbers = {key: summary.get(key) for key in HEADLINE}
    numbers["seg_minus_val_pseudo"] = round(summary["seg_miou"] - summary["seg_pseudo_val_miou"], 4)
    numbers["seg_min_class_iou"] = lowest_class_iou(results_of(run, "eval-seg"))
    numbers["pseudo_min_class_iou"] = lowest_class_iou(results_of(run, "eval-pseudo"))
    numbers["pseudo_aff_min_class_iou"] = optional_lowest(run, "eval-pseudo", "affinity")
    numbers["pseudo_r2_min_class_iou"] = optional_lowest(run, "eval-pseudo-r2")
    numbers["seg_r2_min_class_iou"] = optional_lowest(run, "eval-seg-r2")
    calibration = summary.get("calibration") or {}
    numbers["pseudo_miou_fixed"] = calibration.get("pseudo_miou_fixed")
    numbers["pseudo_miou_oracle"] = calibration.get("pseudo_miou_oracle")
    calibrated = calibration.get("pseudo_miou_calibrated")  # None with calibration off
    numbers["calibrated_to_oracle"] = (round(calibrated / calibration["pseudo_miou_oracle"], 4)
                                       if calibrated is not None else None)
    numbers["warnings"] = summary.get("warnings", [])
    return numbers


def spread(values: list[float]) -> dict:
    return {"values": values, "mean": round(statistics.mean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "worst": min(values)}


def table(result: dict) -> str:
    rows = [f"| `{key}` | {v['mean']:.4f} | {v['std']:.4f} | {v['worst']:.4f} | "
            f"{', '.join(f'{x:.4f}' for x in v['values'])} |" for key, v in result["spread"].items()]
    notes = [f"- seed {seed}: {line}" for seed, lines in result["warnings"].items() for line in lines]
    return "\n".join([
        f"Whole-pipeline seeds {result['seeds']} of `{result['config']}` "
        f"(overrides: {' '.join(result['overrides']) or 'none'}), commit {result['commit']}; "
        f"val split for the segmenters, train split for seeds and pseudo-masks.", "",
        "| quantity | mean | std | worst | per seed |", "|---|---|---|---|---|", *rows, "",
        "Warnings of the seeds' reports:" if notes else "No seed's report has a warning.", *notes])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--run", default=None, help="seed 0's run folder (default: runs/<config name>)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every seed")
    args = parser.parse_args()
    run = Path(args.run or f"runs/{Path(args.config).stem}")
    seeds = list(range(args.seeds))
    for seed in seeds:
        run_pipeline(args.config, seed_run(run, seed), seed, args.overrides)
    numbers = {seed: seed_numbers(seed_run(run, seed)) for seed in seeds}
    result = {"seeds": seeds, "config": args.config, "overrides": args.overrides, "run": str(run),
              "commit": git_commit(),
              # keys a config does not produce (those of stages it has off) are left out
              "spread": {key: spread([numbers[s][key] for s in seeds]) for key in HEADLINE
                         if all(numbers[s][key] is not None for s in seeds)},
              "warnings": {seed: numbers[seed]["warnings"] for seed in seeds}}
    result["steps"], steps = step_table([step_scores(seed_run(run, seed)) for seed in seeds])
    text = table(result) + ("\n\nPer step, mean over seeds (worst seed); gain: mean mIoU over the step "
                            "it follows:\n\n" + steps if result["steps"] else "")
    print(text)
    name = Path(args.config).stem
    save(f"seeds-{name}.json", result)
    save(f"seeds-{name}.md", text + "\n")


if __name__ == "__main__":
    main()
