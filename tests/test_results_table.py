"""bench/results_table.py: the mean ± std table of seed runs' summaries, and its block in a
Markdown file. Every expected number below is worked out by hand."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
from results_table import replace_block, seed_runs, table  # noqa: E402


def summaries() -> list[dict]:
    """Three seeds; seed 1 lacks a second round, so its rows must be left out."""
    return [{"cls_map": 0.908, "seg_miou": 0.229, "seg_ratio": 0.8, "seg_r2_miou": 0.25},
            {"cls_map": 0.898, "seg_miou": 0.210, "seg_ratio": 0.7, "seg_r2_miou": None},
            {"cls_map": 0.903, "seg_miou": 0.284, "seg_ratio": 0.9}]


def test_table_rows_are_mean_std_worst_and_each_seed():
    # cls_map: mean 2.709 / 3 = 0.903; deviations 0.005, -0.005, 0: variance 5e-5 / 2, std 0.005.
    # seg_miou: mean 0.723 / 3 = 0.241; deviations -0.012, -0.031, 0.043:
    #   (0.000144 + 0.000961 + 0.001849) / 2 = 0.001477, std 0.03843 -> 0.038.
    # seg_ratio: mean 0.8; deviations 0, -0.1, 0.1: variance 0.01, std 0.1.
    assert table(summaries(), "seeds 0, 1, 2").splitlines() == [
        "| quantity | mean ± std | worst | seeds 0, 1, 2 |",
        "|---|---|---|---|",
        "| classifier val mAP | 0.903 ± 0.005 | 0.898 | 0.908, 0.898, 0.903 |",
        "| first segmenter, val | 0.241 ± 0.038 | 0.210 | 0.229, 0.210, 0.284 |",
        "| first segmenter / upper bound | 0.800 ± 0.100 | 0.700 | 0.800, 0.700, 0.900 |"]


def test_one_run_has_no_spread():
    assert table([{"cls_map": 0.5}], "seeds 0").splitlines()[-1] == "| classifier val mAP | 0.500 ± 0.000 | 0.500 | 0.500 |"


def test_seed_runs_are_named_as_bench_seeds_names_them():
    assert seed_runs(Path("runs/msrc"), 3) == [Path("runs/msrc"), Path("runs/msrc-seed1"), Path("runs/msrc-seed2")]


def test_replace_block_keeps_the_rest_and_is_repeatable():
    text = "# Benchmarks\n\n<!-- results:msrc -->\nold\n<!-- /results:msrc -->\n\nNotes.\n"
    once = replace_block(text, "msrc", "new table")
    assert once == "# Benchmarks\n\n<!-- results:msrc -->\nnew table\n<!-- /results:msrc -->\n\nNotes.\n"
    assert replace_block(once, "msrc", "new table") == once
    # a new benchmark's block goes after the last block, or at the end of a file without one
    assert replace_block(once, "default", "other") == (
        "# Benchmarks\n\n<!-- results:msrc -->\nnew table\n<!-- /results:msrc -->\n\n"
        "<!-- results:default -->\nother\n<!-- /results:default -->\n\nNotes.\n")
    assert replace_block("# Benchmarks\n", "msrc", "t") == "# Benchmarks\n\n<!-- results:msrc -->\nt\n<!-- /results:msrc -->\n"
    assert replace_block("", "msrc", "t") == "<!-- results:msrc -->\nt\n<!-- /results:msrc -->\n"


def test_the_command_writes_the_block_from_run_folders(tmp_path):
    for seed, summary in enumerate(summaries()):
        run = tmp_path / ("runs/msrc" if seed == 0 else f"runs/msrc-seed{seed}") / "report"
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({**summary, "git_commit": "abcdef0123",
                                                      "dataset": {"name": "voc", "seed": 0}}))
    doc = tmp_path / "benchmark.md"
    doc.write_text("<!-- results:msrc -->\n<!-- /results:msrc -->\n")
    subprocess.run([sys.executable, str(BENCH / "results_table.py"), "--run", str(tmp_path / "runs/msrc"),
                    "--write", str(doc)], check=True, capture_output=True)
    written = doc.read_text()
    assert "| classifier val mAP | 0.903 ± 0.005 | 0.898 | 0.908, 0.898, 0.903 |" in written
    assert "commit abcdef0" in written and "| quantity | mean ± std | worst | seeds 0, 1, 2 |" in written
    assert written.startswith("<!-- results:msrc -->\n") and written.endswith("<!-- /results:msrc -->\n")
