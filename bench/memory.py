"""Peak resident memory of the per-image stages at 1,000 and 4,000 images: flat if they stream.

Builds the procedural shapes dataset (64 px) at both sizes, trains one small classifier on the
smaller, and runs `cams`, `eval-cams`, `pseudo` and `eval-pseudo` on each in fresh processes;
each stage's manifest records its process's peak resident memory (the CRF pool's workers are
separate processes, each holding a few images). Prints a table and writes bench/out/memory.json.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.runs import read_json
from pipeline.stages import output_path
from bench_out import save

SIZES = (1000, 4000)
STAGES = ["cams", "eval-cams", "pseudo", "eval-pseudo"]


def overrides(work: Path, images: int) -> list[str]:
    return [f"run_dir={work}/run{images}", "data.name=shapes", f"data.root={work}/data{images}",
            "data.image_size=64", f"data.n_train={images}", "data.n_val=16", "cls.split=train",
            "cls.crop_size=64", "cls.epochs=1", "cls.batch_size=32", "cam.splits=[train]",
            "cam.layers=[layer2]", "eval.split=train", "cls.pretrain_split=''", "eval.compare_images=0"]


def stage(name: str, args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "pipeline", name, *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for images in SIZES:
            args = overrides(work, images)
            stage("data", args)
            if images == SIZES[0]:
                stage("train-cls", args)
            else:
                classifier = lambda size: output_path(work / f"run{size}", "train-cls", "manifest").parent
                shutil.copytree(classifier(SIZES[0]), classifier(images))
            for name in STAGES:
                stage(name, args)
            rows[images] = {name: read_json(output_path(work / f"run{images}", name, "manifest"))["peak_rss_mib"]
                            for name in STAGES}
    small, large = SIZES
    print(f"| stage | peak RSS, {small} images (MiB) | {large} images (MiB) | change |")
    print("|---|---|---|---|")
    for name in STAGES:
        a, b = rows[small][name], rows[large][name]
        print(f"| {name} | {a:.0f} | {b:.0f} | {100 * (b - a) / a:+.1f}% |")
    save("memory.json", {str(k): v for k, v in rows.items()})


if __name__ == "__main__":
    main()
