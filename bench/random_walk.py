"""The random walk of affinity refinement: ours (sparse, `pipeline.refine.random_walk.propagate`)
beside IRN's dense walk (`bench/dense_walk.py`) on the same maps, one thread.

Sizes: a 64 px scene (16 x 16 at stride 4) and a 500 x 375 photo's (125 x 94 at stride 4), with
IRN's inference settings: radius 5, beta 10, 2^8 steps, K = 3 class maps walked and the
background a constant 0.25 after the walk. The maps are synthetic and fixed by a seed: three
elliptic objects side by side, a boundary map along their outlines (blurred, with noise) and CAMs covering
their cores. Each variant runs in its own process so that its peak resident memory
(`ru_maxrss`) is its own; "added" is that peak less the process's peak before the walk. Ours:
the best of 3 runs after a warm-up; the dense walk at 500 x 375 runs once (minutes). Labels are
IRN's (upsampled to the image, argmax against the background) and compared pixel by pixel.
Prints a table and writes JSON to bench/out/random_walk.json.
"""
from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"  # before numpy, scipy and torch load their thread pools

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import ndimage  # noqa: E402

from bench_out import save  # noqa: E402
from dense_walk import dense_propagate  # noqa: E402
from pipeline.refine.random_walk import propagate, walk_labels  # noqa: E402

SIZES = {"64 px": (64, 64), "500 x 375": (375, 500)}  # (height, width) of the image
STRIDE, RADIUS, BETA, EXP_TIMES, BACKGROUND, REPEATS = 4, 5, 10.0, 8, 0.25, 3
CLASSES = np.array([2, 7, 14])  # three 0-based class indices, as a seed file's `classes`
TARGETS = {"seconds": 2.0, "added_mb": 500.0, "speed_ratio": 10.0, "agreement": 0.999}
VARIANTS = {"ours": propagate, "dense (IRN)": dense_propagate}


def scene(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(boundary [h, w], CAMs [3, h, w]) at stride 4 of an image height x width."""
    rng = np.random.default_rng(seed)
    h, w = -(-height // STRIDE), -(-width // STRIDE)
    y, x = np.mgrid[:h, :w] / max(h, w)
    labels = np.zeros((h, w), np.int64)
    cams = []
    for k in range(len(CLASSES)):
        cy = rng.uniform(0.3, 0.7) * h / max(h, w)
        cx = (k + 0.5 + rng.uniform(-0.15, 0.15)) / len(CLASSES) * w / max(h, w)
        ry, rx = rng.uniform(0.15, 0.3), rng.uniform(0.12, 0.17)
        inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2
        labels[inside < 1] = k + 1
        core = np.clip(1.0 - inside, 0, None) ** 2  # CAMs peak on the discriminative core
        cams.append(core * rng.uniform(0.7, 1.0, size=(h, w)))
    outline = np.zeros((h, w))  # one pixel wide: where the label changes to the right or below
    outline[:, :-1] += labels[:, 1:] != labels[:, :-1]
    outline[:-1] += labels[1:] != labels[:-1]
    boundary = np.clip(ndimage.gaussian_filter(outline, 0.5) * 2.0, 0, 1)
    boundary = np.clip(boundary + rng.uniform(0, 0.15, size=(h, w)), 0, 1)
    cams = np.stack(cams)
    return boundary.astype(np.float32), (cams / cams.max(axis=(1, 2), keepdims=True)).astype(np.float32)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(variant: str, size: str, out: Path) -> None:
    """Run one variant on one size in this process; write its numbers and labels to `out`."""
    torch.set_num_threads(1)
    height, width = SIZES[size]
    boundary, cams = (torch.from_numpy(a) for a in scene(height, width))
    walk = VARIANTS[variant]
    large = variant != "ours" and size == "500 x 375"
    before = peak_mb()
    seconds = []
    for _ in range(1 if large else REPEATS + 1):
        began = time.perf_counter()
        walked = walk(cams, boundary, radius=RADIUS, beta=BETA, exp_times=EXP_TIMES)
        labels = walk_labels(walked, torch.from_numpy(CLASSES), (height, width), STRIDE, BACKGROUND)
        seconds.append(time.perf_counter() - began)
    np.savez(out.with_suffix(".npz"), walked=walked.numpy(), labels=labels.numpy())
    out.write_text(json.dumps({"seconds": min(seconds if large else seconds[1:]),
                               "peak_mb": peak_mb(), "added_mb": peak_mb() - before}))


def run_variant(variant: str, size: str, folder: Path) -> dict:
    out = folder / f"{variant.split()[0]}-{size.split()[0]}.json"
    subprocess.run([sys.executable, __file__, "--child", variant, size, str(out)], check=True)
    with np.load(out.with_suffix(".npz")) as arrays:
        return {**json.loads(out.read_text()), "walked": arrays["walked"], "labels": arrays["labels"]}


def compare(size: str, folder: Path) -> dict:
    ours, dense = (run_variant(variant, size, folder) for variant in VARIANTS)
    return {"ours": {k: ours[k] for k in ("seconds", "peak_mb", "added_mb")},
            "dense": {k: dense[k] for k in ("seconds", "peak_mb", "added_mb")},
            "speed_ratio": dense["seconds"] / ours["seconds"],
            "agreement": float((ours["labels"] == dense["labels"]).mean()),
            "max_abs_difference": float(np.abs(ours["walked"] - dense["walked"]).max()),
            "walked_max": float(np.abs(dense["walked"]).max())}


def cpu_name() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")


def main() -> None:
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        results = {size: compare(size, Path(folder)) for size in SIZES}
    big = results["500 x 375"]
    checks = {"ours seconds <= 2": big["ours"]["seconds"] <= TARGETS["seconds"],
              "ours added MB <= 500": big["ours"]["added_mb"] <= TARGETS["added_mb"],
              "speed ratio >= 10": big["speed_ratio"] >= TARGETS["speed_ratio"],
              "labels agree >= 99.9%": big["agreement"] >= TARGETS["agreement"]}
    print(f"random walk, radius {RADIUS}, beta {BETA:g}, 2^{EXP_TIMES} steps, {len(CLASSES)} classes, "
          f"stride {STRIDE}; one thread; {cpu_name()}, {os.cpu_count()} cores, load {load_before[0]:.2f}")
    print(f"  {'size':10s} {'variant':12s} {'seconds':>9s} {'peak MB':>8s} {'added MB':>9s}")
    for size, result in results.items():
        for name in ("ours", "dense"):
            row = result[name]
            print(f"  {size:10s} {name:12s} {row['seconds']:9.3f} {row['peak_mb']:8.0f} {row['added_mb']:9.0f}")
        print(f"  {size:10s} dense / ours {result['speed_ratio']:8.1f}x, labels agree on "
              f"{100 * result['agreement']:.3f}%, max |difference| {result['max_abs_difference']:.2e} "
              f"(maps up to {result['walked_max']:.3f})")
    for check, passed in checks.items():
        print(f"  {'PASS' if passed else 'FAIL'}  {check}")
    save("random_walk.json", {
        "settings": {"radius": RADIUS, "beta": BETA, "exp_times": EXP_TIMES, "stride": STRIDE,
                     "classes": len(CLASSES), "background": BACKGROUND, "repeats": REPEATS},
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": 1,
                    "load_before": load_before[0], "load_after": os.getloadavg()[0]},
        "results": results, "targets": TARGETS, "checks": checks})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "SIZE", "OUT"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        child(arguments.child[0], arguments.child[1], Path(arguments.child[2]))
    else:
        main()
