"""Every stage on CUDA, beside the same run on the CPU (run where a GPU is present).

`python bench/gpu_pipeline.py [--out DIR]` runs `python -m pipeline all` in process on the
procedural shapes dataset (32 px, 256 + 64 images; a minute or two) with the default recipe's
settings (frozen features cached, LayerCAM seeds, the second round, the upper bound) and the
affinity stages, once with `device=cpu` and once with `device=cuda`. It checks that the
CUDA run finishes every stage, that every checkpoint it writes holds CPU tensors only (so it
loads on a machine without a GPU), and that its headline numbers land near the CPU run's: the two
take other floating-point paths, so they are two seeds of one recipe, not the same numbers.
Prints one line per check and writes bench/out/gpu_pipeline.json; exits non-zero if one fails.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from pipeline.config import load_config
from pipeline.runs import read_json
from pipeline.stages import execute_all, output_path
from bench_out import save

HEADLINE = ["cls_map", "pseudo_miou", "pseudo_aff_miou", "pseudo_r2_miou", "seg_miou", "seg_r2_miou",
            "seg_upper_bound_miou"]
# Tiny trainings diverge between floating-point paths, so this check is coarse: it catches a stage
# that scored nothing, or far less than the CPU's run, not a small numerical fault (gpu_check.py's).
TOLERANCE = 0.15
DEFAULT = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"


def settings(root: Path, device: str) -> list[str]:
    """The default recipe on a small shapes dataset, with the affinity stages on."""
    small = {"data.name": "shapes", "data.root": root / "data", "data.image_size": 32, "data.n_train": 256,
             "data.n_val": 64, "cls.split": "train", "cls.pretrain_split": "''", "cls.samples": 2560,
             "seg.samples": 2560, "affinity.enabled": "true", "affinity.samples": 512,
             "affinity.train_radius": 3, "eval.compare_images": 64, "run_dir": root / "run", "device": device}
    return [f"{key}={value}" for key, value in small.items()]


def devices_in(checkpoint: Path) -> set[str]:
    """The device types of every tensor a checkpoint holds, loaded where it was saved."""
    state = torch.load(checkpoint, map_location=None, weights_only=True)
    found, stack = set(), [state]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            found.add(item.device.type)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for the two runs (default: a temporary one)")
    parser.add_argument("--device", default="cuda", help="the device run beside the CPU's (cpu checks "
                                                         "this script itself on a machine without a GPU)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    root = args.out or Path(tempfile.mkdtemp(prefix="gpu-pipeline-"))
    runs = {"reference": "cpu", "checked": args.device}
    summaries = {}
    for run, device in runs.items():
        torch.manual_seed(0)
        execute_all(load_config(DEFAULT, settings(root / run, device)))
        summaries[run] = read_json(output_path(root / run / "run", "report", "summary"))
    checks = {}
    for key in HEADLINE:
        cpu, checked = summaries["reference"].get(key), summaries["checked"].get(key)
        checks[f"{key}: cpu {cpu}, {args.device} {checked}"] = (checked is not None
                                                                and abs(checked - cpu) <= TOLERANCE)
    for checkpoint in sorted((root / "checked" / "run").glob("*/model.pt")):
        found = devices_in(checkpoint)
        checks[f"{checkpoint.parent.name}/model.pt tensors on {sorted(found)}"] = found == {"cpu"}
    for name, passed in checks.items():
        print(f"  {'ok  ' if passed else 'FAIL'} {name}")
    failed = [name for name, passed in checks.items() if not passed]
    save("gpu_pipeline.json", {"checks": checks, "failed": failed, "summaries": summaries,
                               "device": torch.cuda.get_device_name() if args.device == "cuda" else args.device,
                               "torch": torch.__version__})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
