"""Wall time, peak resident memory and throughput of every stage of a finished run, from the
manifests the stages wrote. Prints a Markdown table and writes bench/out/stages.json."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.runs import load_manifest
from bench_out import save

FOLDERS = {"data": "data", "train-cls": "classifier", "cams": "cams", "eval-cams": "eval/cams",
           "compare-cams": "eval/compare-cams", "pseudo": "pseudo", "eval-pseudo": "eval/pseudo",
           "train-seg": "segmenter", "eval-seg": "eval/seg", "train-seg (gt)": "segmenter-gt",
           "eval-seg (gt)": "eval/seg-gt", "report": "report"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", default="runs/default")
    args = parser.parse_args()
    rows = []
    for stage, folder in FOLDERS.items():
        manifest = load_manifest(Path(args.run) / folder)
        if manifest:
            metrics = manifest.get("metrics") or {}
            rows.append({"stage": stage, "seconds": manifest["seconds"], "peak_rss_mib": manifest.get("peak_rss_mib"),
                         "images_per_second": metrics.get("images_per_second"),
                         "commit": manifest.get("git_commit")})
    lines = ["| stage | seconds | peak RSS (MiB) | images/s |", "|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['seconds']:.1f} | {r['peak_rss_mib']} | {r['images_per_second'] or ''} |"
              for r in rows]
    total = sum(r["seconds"] for r in rows)
    peak = max((r["peak_rss_mib"] or 0) for r in rows) if rows else 0
    lines.append(f"| total | {total:.1f} | {peak} (largest) | |")
    print("\n".join(lines))
    save("stages.json", {"run": args.run, "rows": rows, "total_seconds": round(total, 1),
                         "largest_peak_rss_mib": peak})


if __name__ == "__main__":
    main()
