"""The results table of one benchmark: mean ± std, worst seed and every seed's value of the
headline numbers in the seed runs' `report/summary.json`, as Markdown.

    python bench/results_table.py --run runs/default --seeds 3 [--write docs/benchmark.md]
    python bench/results_table.py runs/a runs/b runs/c [--name NAME] [--write FILE]

`--run` finds the seed runs where `bench/seeds.py` puts them (seed 0 in the run folder, seed s
in `<run>-seed<s>`). A row is shown only when every run has its number. With `--write`, the
table replaces what stands between `<!-- results:NAME -->` and `<!-- /results:NAME -->` in FILE
(NAME: the first run folder's name unless given); a new NAME's block goes after the last one.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from pipeline.stages import output_path

# (row label, summary key, dotted within a block); higher is better for each, so a benchmark's
# worst seed is its minimum.
ROWS = [("classifier val mAP", "cls_map"),
        ("seeds, the run's threshold (calibrated), train", "seed_miou_configured"),
        ("seeds, best threshold (oracle: swept on GT), train", "seed_miou_best"),
        ("pseudo-masks, train (255 as background)", "pseudo_miou"),
        ("pseudo-masks, val (255 as background)", "pseudo_val_miou"),
        ("pseudo-masks at the fixed choices (calibrate.fixed_*), train", "calibration.pseudo_miou_fixed"),
        ("pseudo-masks at the oracle's layer set and threshold (swept on GT), train", "calibration.pseudo_miou_oracle"),
        ("precision of the confident pixels, train", "pseudo_precision"),
        ("affinity pseudo-masks, train", "pseudo_aff_miou"),
        ("affinity pseudo-masks, val", "pseudo_aff_val_miou"),
        ("first segmenter, val", "seg_miou"),
        ("round-2 pseudo-masks, train", "pseudo_r2_miou"),
        ("round-2 (final) segmenter, val", "seg_r2_miou"),
        ("same segmenter trained on ground truth, val", "seg_upper_bound_miou"),
        ("first segmenter / upper bound", "seg_ratio"),
        ("final segmenter / upper bound", "seg_r2_ratio")]


def seed_runs(run: Path, seeds: int) -> list[Path]:
    """The run folders of seeds 0..seeds-1, named as bench/seeds.py names them."""
    return [run if seed == 0 else run.parent / f"{run.name}-seed{seed}" for seed in range(seeds)]


def read_summary(run: Path) -> dict:
    return json.loads(output_path(run, "report", "summary").read_text())


def summary_value(summary: dict, key: str):
    """The summary's value at a dotted key ("calibration.pseudo_miou_fixed"); None where it lacks it."""
    value = summary
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def table(summaries: list[dict], runs_header: str) -> str:
    """The Markdown table; `runs_header` heads the column of every run's value."""
    lines = [f"| quantity | mean ± std | worst | {runs_header} |", "|---|---|---|---|"]
    for label, key in ROWS:
        values = [summary_value(summary, key) for summary in summaries]
        if any(value is None for value in values):
            continue
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(f"| {label} | {statistics.mean(values):.3f} ± {std:.3f} | {min(values):.3f} | "
                     + ", ".join(f"{value:.3f}" for value in values) + " |")
    return "\n".join(lines)


def caption(summaries: list[dict], runs: list[Path]) -> str:
    """Where the numbers come from: the runs, their commits and dataset."""
    commits = sorted({str(summary.get("git_commit") or "unknown")[:7] for summary in summaries})
    dataset = summaries[0].get("dataset", {})
    return (f"Runs {', '.join(f'`{run}`' for run in runs)}; commit {', '.join(commits)}; dataset "
            f"`{dataset.get('name', '?')}` (data seed {dataset.get('seed', '?')}). Seeds and "
            "pseudo-masks scored on train, segmenters on val.")


def replace_block(text: str, name: str, block: str) -> str:
    """`text` with the block between the markers of `name` replaced by `block`; without those
    markers, a new block goes after the last results block, or at the end."""
    start, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    if start in text and end in text.split(start, 1)[1]:
        before, rest = text.split(start, 1)
        return f"{before}{start}\n{block}\n{end}{rest.split(end, 1)[1]}"
    new = f"{start}\n{block}\n{end}"
    last = text.rfind("<!-- /results:")
    if last < 0:
        return f"{text.rstrip()}\n\n{new}\n" if text.strip() else f"{new}\n"
    cut = text.index("-->", last) + len("-->")
    return f"{text[:cut]}\n\n{new}{text[cut:]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path, help="run folders, one per seed")
    parser.add_argument("--run", type=Path, help="seed 0's run folder (with --seeds)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--name", help="the block's name in --write's file (default: the first run's folder name)")
    parser.add_argument("--write", type=Path, help="a Markdown file to write the table into")
    args = parser.parse_args()
    if bool(args.runs) == bool(args.run):
        parser.error("give either run folders or --run")
    runs = seed_runs(args.run, args.seeds) if args.run else args.runs
    header = f"seeds {', '.join(map(str, range(args.seeds)))}" if args.run else "runs in the order given"
    summaries = [read_summary(run) for run in runs]
    block = f"{caption(summaries, runs)}\n\n{table(summaries, header)}"
    print(block)
    if args.write:
        name = args.name or runs[0].name
        args.write.write_text(replace_block(args.write.read_text() if args.write.is_file() else "", name, block))
        print(f"written into {args.write} (results:{name})")


if __name__ == "__main__":
    main()
