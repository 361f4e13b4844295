"""The segmenter's teacher, chosen without ground truth: one segmenter per candidate high threshold
of its pseudo-masks, each scored by how well it agrees with the val pseudo-masks at the run's
calibrated cut.

    python bench/teacher.py --config configs/fashion-wide.yaml --run runs/fashion-wide \
        [--thresholds 0.5 0.6 0.7] [key=value ...]

The run's stages up to its calibration are run first where they are not done for this config and
overrides (`pseudo.splits` must hold the val split). Each candidate t gets a trial run folder,
<run>-teacher/high-<t> (or under --out), that starts from hard links to the run's data,
classifier, seeds and calibration (a trial folder holding another run's is refused) and runs
pseudo, train-seg and eval-seg with `pseudo.fg_threshold_high=t`: the masks' other settings, the
layer set and the seeds' threshold stay the run's, and no teacher margin applies. The reference
is the trial at the calibrated high threshold without margin (the cut, always a candidate
unless --thresholds leaves it out, when only its masks are made): every trial segmenter is
scored against its val pseudo-masks, 255 counted as background (bench/agreement.py), and the
best agreeing candidate is the choice; its margin is the candidate minus the cut. Each one's val
mIoU on ground truth is printed beside it as the oracle and takes no part in the choice. Prints
a Markdown table and writes bench/out/teacher.json and bench/out/teacher.md.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from pipeline import runs  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.metrics import iou_per_class, mean_iou  # noqa: E402
from pipeline.refine.calibration import run_choices  # noqa: E402
from pipeline.stages import execute, output_path, run_outputs  # noqa: E402
from agreement import agreement  # noqa: E402
from bench_out import save  # noqa: E402

TRIAL_STAGES = ["pseudo", "train-seg", "eval-seg"]


def shared_stages(cfg) -> list[str]:
    """What the trials share with the run: every stage before the masks that they read."""
    return ["data", "train-cls", "cams", *(["calibrate"] if cfg.calibrate.enabled else [])]


def check_run(cfg) -> None:
    """Stop with one line where the trials cannot vary the run's teacher."""
    if cfg.seg.labels != "pseudo":
        raise SystemExit(f"seg.labels is '{cfg.seg.labels}': the trials vary the pseudo stage's masks, which "
                         f"train the segmenter only with seg.labels=pseudo")
    if cfg.seg.val_split not in cfg.pseudo.splits:
        raise SystemExit(f"pseudo.splits {cfg.pseudo.splits} holds no {cfg.seg.val_split}: the run has no val "
                         f"pseudo-masks to score the trials against")


def run_shared(cfg) -> None:
    """The run's stages that the trials share, each skipped where it is already done."""
    with runs.locked(Path(cfg.run_dir)):
        for name in shared_stages(cfg):
            execute(name, cfg)


def without_margin(cfg):
    return replace(cfg, calibrate=replace(cfg.calibrate, teacher_margin=0.0))


def calibrated_cut(cfg) -> float:
    """The run's high threshold without any teacher margin: calibrated, fixed or set by hand."""
    return run_choices(without_margin(cfg), run_outputs(cfg.run_dir)).pseudo.fg_threshold_high


def default_thresholds(cut: float) -> list[float]:
    """The cut and three more 0.1 apart above it, below 1: margins 0 to 0.3. Rounded as the
    calibration rounds, not to 0.01: a cut of 0.525 (calibrate.step 0.005) must stay the cut."""
    return [round(cut + step / 10, 4) for step in range(4) if cut + step / 10 < 1]


def threshold_text(high: float) -> str:
    """Two decimals where they say it exactly, four otherwise, so that no two candidates share a
    trial folder (0.525 and 0.53 would both be high-0.53)."""
    return f"{high:.2f}" if round(high, 2) == high else f"{high:.4f}"


def candidate_name(high: float, cut: float, chosen_high: float) -> str:
    notes = [note for note, applies in (("the cut", high == cut), ("chosen", high == chosen_high)) if applies]
    return threshold_text(high) + (f" ({', '.join(notes)})" if notes else "")


def link_or_copy(source: str, target: str) -> None:
    """A hard link (the run's files are never rewritten in place), a copy across file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def trial_config(cfg, out: Path, high: float):
    """The config of the trial at high threshold `high`, its shared stages linked from the run."""
    trial = replace(without_margin(cfg), run_dir=str(out / f"high-{threshold_text(high)}"),
                    pseudo=replace(cfg.pseudo, fg_threshold_high=high))
    for name in shared_stages(cfg):
        source, target = (output_path(run_dir, name, "manifest").parent for run_dir in (cfg.run_dir, trial.run_dir))
        if not target.exists():
            shutil.copytree(source, target, copy_function=link_or_copy)
        elif runs.load_manifest(target) != runs.load_manifest(source):
            # a trial of an earlier run (another classifier, other seeds) would score stale stages
            raise SystemExit(f"{target}: this trial folder holds another run's '{name}'; remove the trial "
                             f"folder or choose another --out")
    return trial


def reference_masks(cfg, out: Path, cut: float) -> Path:
    """The trial folder at the cut, with its pseudo-masks made: the masks every trial is scored by."""
    reference = trial_config(cfg, out, cut)
    with runs.locked(Path(reference.run_dir)):
        execute("pseudo", reference)
    return Path(reference.run_dir)


def score(trial, reference: Path, high: float) -> dict:
    """The trial segmenter's agreement with the reference's val pseudo-masks, and its oracle mIoU."""
    matrix = agreement(Path(trial.run_dir), "eval-seg", reference)
    oracle = runs.read_json(output_path(trial.run_dir, "eval-seg", "manifest"))["metrics"].get("miou")
    return {"high": high, "agreement": round(mean_iou(matrix), 4),
            "agreement_background": round(float(iou_per_class(matrix)[0]), 4), "oracle_miou": oracle,
            "run_dir": trial.run_dir}


def trials(cfg, reference: Path, thresholds: list[float], out: Path) -> list[dict]:
    """One trial per high threshold, run (or found done) under `out`, each `score`d against the
    reference's masks."""
    rows = []
    for high in thresholds:
        trial = trial_config(cfg, out, high)
        with runs.locked(Path(trial.run_dir)):
            for name in TRIAL_STAGES:
                execute(name, trial)
        rows.append(score(trial, reference, high))
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--run", required=True, type=Path, help="a run with its pseudo-masks")
    parser.add_argument("--thresholds", type=float, nargs="+", help="candidate high thresholds")
    parser.add_argument("--out", type=Path, help="where the trial run folders go (default <run>-teacher)")
    parser.add_argument("overrides", nargs="*", help="the run's key=value overrides")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cfg = load_config(args.config, [*args.overrides, f"run_dir={args.run}"])
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    check_run(cfg)
    run_shared(cfg)
    cut = calibrated_cut(cfg)
    out = args.out or args.run.with_name(args.run.name + "-teacher")
    rows = trials(cfg, reference_masks(cfg, out, cut), args.thresholds or default_thresholds(cut), out)
    chosen = max(rows, key=lambda row: row["agreement"])
    table = ["| high threshold | agreement with the val pseudo-masks at the cut | background | val mIoU on ground truth (oracle) |",
             "|---|---|---|---|"]
    table += [f"| {candidate_name(r['high'], cut, chosen['high'])} | {r['agreement']:.4f} | "
              f"{r['agreement_background']:.4f} | {r['oracle_miou']} |" for r in rows]
    margin = round(chosen["high"] - cut, 4)
    header = (f"Run `{args.run}` ({args.config} {' '.join(args.overrides)}), its calibrated cut {threshold_text(cut)}; "
              f"the trial with the best agreement: {threshold_text(chosen['high'])}, a teacher margin of {margin:g}. "
              f"Commit {runs.git_commit()}.")
    print(header + "\n\n" + "\n".join(table))
    save("teacher.json", {"header": header, "rows": rows, "chosen": chosen["high"], "cut": cut, "margin": margin})
    save("teacher.md", header + "\n\n" + "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
