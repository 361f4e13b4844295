"""Wall time, peak resident memory and throughput of every stage of a finished run, from the
manifests the stages wrote, in the order they finished. Prints a Markdown table and writes
bench/out/stages.json."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.runs import MANIFEST, read_json
from bench_out import save


def finished_stages(run: Path) -> list[tuple[str, dict]]:
    """(folder, manifest) of every finished stage of the run, in the order they finished."""
    paths = sorted(run.rglob(MANIFEST), key=lambda path: path.stat().st_mtime_ns)
    return [(path.parent.relative_to(run).as_posix(), read_json(path)) for path in paths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", default="runs/default")
    args = parser.parse_args()
    rows = []
    for folder, manifest in finished_stages(Path(args.run)):
        metrics = manifest.get("metrics") or {}
        rows.append({"stage": manifest["stage"], "folder": folder, "seconds": manifest["seconds"],
                     "peak_rss_mib": manifest.get("peak_rss_mib"),
                     "images_per_second": metrics.get("images_per_second"), "commit": manifest.get("git_commit")})
    lines = ["| stage | folder | seconds | peak RSS (MiB) | images/s |", "|---|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['folder']} | {r['seconds']:.1f} | {r['peak_rss_mib']} | "
              f"{r['images_per_second'] or ''} |" for r in rows]
    total = sum(r["seconds"] for r in rows)
    peak = max((r["peak_rss_mib"] or 0) for r in rows) if rows else 0
    lines.append(f"| total | | {total:.1f} | {peak} (largest) | |")
    print("\n".join(lines))
    save("stages.json", {"run": args.run, "rows": rows, "total_seconds": round(total, 1),
                         "largest_peak_rss_mib": peak})


if __name__ == "__main__":
    main()
