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
from bench_out import save

# Higher is better for each, so a seed's worst is its minimum.
HEADLINE = ["cls_map", "seed_miou_best", "pseudo_miou", "pseudo_val_miou", "pseudo_aff_miou",
            "pseudo_aff_val_miou", "seg_miou",
            "seg_upper_bound_miou", "seg_ratio", "seg_minus_val_pseudo", "seg_min_class_iou",
            "pseudo_min_class_iou", "pseudo_aff_min_class_iou"]


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
    summary = read_json(run / "report" / "summary.json")
    numbers = {key: summary.get(key) for key in HEADLINE}
    numbers["seg_minus_val_pseudo"] = round(summary["seg_miou"] - summary["seg_pseudo_val_miou"], 4)
    numbers["seg_min_class_iou"] = lowest_class_iou(read_json(run / "eval" / "seg" / "results.json"))
    pseudo = read_json(run / "eval" / "pseudo" / "results.json")
    numbers["pseudo_min_class_iou"] = lowest_class_iou(pseudo)
    numbers["pseudo_aff_min_class_iou"] = lowest_class_iou(pseudo["affinity"]) if "affinity" in pseudo else None
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
              # keys a config does not produce (the affinity ones with its stages off) are left out
              "spread": {key: spread([numbers[s][key] for s in seeds]) for key in HEADLINE
                         if all(numbers[s][key] is not None for s in seeds)},
              "warnings": {seed: numbers[seed]["warnings"] for seed in seeds}}
    text = table(result)
    print(text)
    name = Path(args.config).stem
    save(f"seeds-{name}.json", result)
    save(f"seeds-{name}.md", text + "\n")


if __name__ == "__main__":
    main()
