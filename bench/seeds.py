"""The headline over seeds: the segmenter on pseudo-masks and its upper bound, each trained with
`--seeds` seeds on one run's pseudo-masks, and the val pseudo-masks it must beat.

Seed s > 0 trains in `<run>-seed<s>/`, a run folder whose data, classifier, cams and pseudo
folders link to the run's own (only the segmenters' seed changes); seed 0 is the run itself.
The val pseudo-masks' scores come from the run's eval-pseudo stage. Prints a Markdown table and writes bench/out/seeds.json and bench/out/seeds.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from pipeline.config import load_config  # noqa: E402
from pipeline.runs import git_commit, read_json  # noqa: E402
from pipeline.stages import execute  # noqa: E402
from bench_out import save  # noqa: E402

SHARED = ("data", "classifier", "cams", "pseudo")


def seed_run(run: Path, seed: int) -> Path:
    """The run folder for `seed`: the run itself, or one linking to its upstream folders."""
    if seed == 0:
        return run
    folder = run.parent / f"{run.name}-seed{seed}"
    folder.mkdir(exist_ok=True)
    for name in SHARED:
        link = folder / name
        if not link.exists():
            link.symlink_to((run / name).resolve(), target_is_directory=True)
    return folder


def segmenter_miou(config: str, run: Path, seed: int, labels: str) -> float:
    cfg = load_config(config, [f"run_dir={seed_run(run, seed)}", f"seed={seed}", f"seg.labels={labels}"])
    execute("train-seg", cfg)
    execute("eval-seg", cfg)
    folder = "eval/seg" if labels == "pseudo" else "eval/seg-gt"
    return read_json(Path(cfg.run_dir) / folder / "results.json")["miou"]


def val_pseudo_scores(run: Path) -> dict:
    """The run's val pseudo-masks' scores (eval-pseudo makes them when `pseudo.splits` has val)."""
    results = read_json(run / "eval" / "pseudo" / "results.json")
    if "val" not in results:
        raise SystemExit(f"{run / 'eval' / 'pseudo' / 'results.json'}: no val scores; "
                         f"add the val split to pseudo.splits")
    return {k: results["val"][k] for k in ("miou", "precision", "coverage")}


def spread(values: list[float]) -> dict:
    return {"values": values, "mean": round(statistics.mean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--run", default="runs/default", help="a finished run (through pseudo)")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    run = Path(args.run)
    seeds = list(range(args.seeds))
    pseudo = spread([segmenter_miou(args.config, run, s, "pseudo") for s in seeds])
    upper = spread([segmenter_miou(args.config, run, s, "gt") for s in seeds])
    ratio = spread([round(p / u, 4) for p, u in zip(pseudo["values"], upper["values"])])
    val_pseudo = val_pseudo_scores(run)
    result = {"seeds": seeds, "seg_miou": pseudo, "seg_upper_bound_miou": upper, "seg_ratio": ratio,
              "val_pseudo": val_pseudo, "run": str(run), "commit": git_commit()}
    table = "\n".join([
        f"Seeds {seeds} of the segmenters (classifier, seeds and pseudo-masks of `{run}` shared), "
        f"val split, commit {result['commit']}.", "",
        "| quantity | mean | std | per seed |", "|---|---|---|---|",
        *[f"| {name} | {v['mean']:.4f} | {v['std']:.4f} | {', '.join(f'{x:.4f}' for x in v['values'])} |"
          for name, v in (("segmenter on pseudo-masks (`seg_miou`)", pseudo),
                          ("segmenter on ground truth (`seg_upper_bound_miou`)", upper),
                          ("ratio (`seg_ratio`)", ratio))],
        "", f"Val pseudo-masks made like the train ones (255 as background): mIoU {val_pseudo['miou']:.4f}, "
        f"precision {val_pseudo['precision']:.4f}, coverage {val_pseudo['coverage']:.4f}."])
    print(table)
    save("seeds.json", result)
    save("seeds.md", table + "\n")


if __name__ == "__main__":
    main()
