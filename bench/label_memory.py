"""Peak resident memory of `label` on one large photo (default 6000 x 4000): a run's classifier
labels it at its working size (`label.max_side`, by default the run's `data.max_side` within 8
times its training size) and writes the mask at the photo's own size.

The photo is scikit-image's astronaut, upscaled. `label` runs as a subprocess; the peak is the
largest resident set of it and of its CRF workers (getrusage of the waited-for children). Prints
a line and writes bench/out/label_memory.json.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import skimage
from PIL import Image

from pipeline.data.images import read_mask
from bench_out import save


def large_photo(path: Path, width: int, height: int) -> None:
    photo = Image.open(Path(skimage.__file__).parent / "data" / "astronaut.png").convert("RGB")
    photo.resize((width, height), Image.Resampling.BILINEAR).save(path, quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", default="runs/default", help="a run with a trained classifier")
    parser.add_argument("--width", type=int, default=6000)
    parser.add_argument("--height", type=int, default=4000)
    parser.add_argument("overrides", nargs="*", help="key=value overrides for label, e.g. label.max_side=1024")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        folder, out = Path(work) / "photos", Path(work) / "out"
        folder.mkdir()
        large_photo(folder / "large.jpg", args.width, args.height)
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pipeline", "label", "--images", str(folder), "--run",
                        args.run, "--out", str(out), *args.overrides], check=True)
        seconds = time.perf_counter() - began
        mask = read_mask(out / "masks" / "large.png")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    result = {"photo": [args.width, args.height], "mask": list(mask.shape[::-1]), "run": args.run,
              "overrides": args.overrides, "peak_rss_mib": round(peak), "seconds": round(seconds, 1),
              "unsure_fraction": round(float(np.mean(mask == 255)), 4)}
    print(f"label on a {args.width} x {args.height} photo: peak RSS {result['peak_rss_mib']} MiB, "
          f"{result['seconds']} s, mask {mask.shape[1]} x {mask.shape[0]}")
    save("label_memory.json", result)


if __name__ == "__main__":
    main()
