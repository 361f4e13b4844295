"""Command line: `python -m pipeline <stage> --config FILE [key=value ...]` (stage `all`: every
stage the config runs, in one process),
`python -m pipeline label --images DIR [--labels CSV] --run RUN --out DIR [key=value ...]`
(the settings the run's seeds and pseudo-masks were made with, then the overrides), and
`python -m pipeline explain --images PATH... --out DIR (--run RUN | --model NAME) [...]`
(`python -m pipeline explain --help` lists its options)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from contextlib import nullcontext
from pathlib import Path

from pipeline import distributed, stages
from pipeline.cam.engine import FUSIONS
from pipeline.config import load_config
from pipeline.data.images import DataError
from pipeline.errors import ConfigError
from pipeline.explain.command import ExplainRequest, explain_images
from pipeline.label import label_folder, run_config
from pipeline.preflight import model_settings
from pipeline.runs import StageError, locked


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    parser.add_argument("stage", choices=[*stages.STAGES, "all", "label", "explain"])
    parser.add_argument("--config", default="configs/default.yaml", help="YAML config file")
    parser.add_argument("--force", action="store_true", help="run even if the manifest matches")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. cam.layers=[layer3,layer4]")
    label = parser.add_argument_group("label: pseudo-label a folder of new images with a trained run")
    label.add_argument("--images", type=Path, help="folder of images to label")
    label.add_argument("--labels", type=Path, help="optional CSV 'image,labels' (labels separated by ';')")
    label.add_argument("--run", type=Path, help="a run folder with classifier/model.pt")
    label.add_argument("--out", type=Path, help="folder for masks, overlays, labels.csv, summary.json")
    args = parser.parse_intermixed_args(argv)
    if args.stage == "label" and None in (args.images, args.run, args.out):
        parser.error("label needs --images DIR, --run RUN and --out DIR")
    return args


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def parse_explain(argv: list[str]) -> ExplainRequest:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline explain",
        description="Heatmaps of what a classifier looked at: per image and target a grid of methods x "
                    "layers over the image, raw maps (.npz), summary.json and index.html in --out.")
    parser.add_argument("--images", type=Path, nargs="+", required=True,
                        help="image files and folders (a folder's image files, in name order)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the outputs")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="a camseg run folder: its classifier and classes")
    source.add_argument("--model", help="a torchvision classification model (resnet50) or a timm architecture (tf_efficientnet_lite0)")
    parser.add_argument("--weights", default="none",
                        help="--model's weights: none (random), a torchvision name (IMAGENET1K_V2), an offline ImageNet name (efficientnet_lite0.imagenet) or a file")
    parser.add_argument("--methods", type=_names, help="comma-separated (default: every method that works)")
    parser.add_argument("--layers", type=_names, help="comma-separated module names (default: the last "
                                                      "block of each stage)")
    parser.add_argument("--top-k", type=int, default=3, help="each image's k best classes (default 3)")
    parser.add_argument("--classes", type=_names, help="comma-separated class names or indices instead")
    parser.add_argument("--size", type=int, help="input size (default: the weights' crop, 224, or the run's "
                                                 "training size)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--fuse", choices=FUSIONS, default="max", help="fusion of the layers' maps")
    parser.add_argument("--faithfulness", action="store_true",
                        help="also score every method and layer (average drop / increase, ROAD): slow")
    parser.add_argument("--percentiles", type=lambda text: [int(p) for p in _names(text)],
                        help="ROAD's removal percentiles, comma-separated (default: its own)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = parser.parse_args(argv)
    for name in ("top_k", "size", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    run = stages.run_outputs(args.run) if args.run else None
    return ExplainRequest(**{**vars(args), "run": run})


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    argv = sys.argv[1:] if argv is None else argv
    explaining = argv[:1] == ["explain"]  # options of its own: no config, no overrides
    args = parse_explain(argv[1:]) if explaining else parse(argv)
    try:
        if explaining:
            with locked(args.out):
                return 1 if explain_images(args)["failed"] else 0
        cfg = (run_config(stages.run_outputs(args.run), args.overrides) if args.stage == "label"
               else load_config(args.config, args.overrides))
        if cfg.threads > 0:
            import torch
            torch.set_num_threads(cfg.threads)
        if args.stage == "label":
            cfg = model_settings(cfg)  # before any image is read, as the stage runner does before a stage
            with locked(args.out):
                summary = label_folder(cfg, stages.run_outputs(args.run), args.images, args.labels, args.out)
                return 1 if summary["failed"] else 0
        run_stages(args, cfg)
    except (ConfigError, StageError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a folder that cannot be made or read, anywhere a stage looks
        print(f"error: {error.filename}: {error.strerror}" if error.filename else f"error: {error}",
              file=sys.stderr)
        return 2
    return 0


def run_stages(args: argparse.Namespace, cfg) -> None:
    """The stage (or `all`) the command names, holding the run folder; under torchrun rank 0 holds
    it for every rank."""
    distributed.init(cfg.device)
    with locked(cfg.run_dir) if distributed.is_main() else nullcontext():
        if args.stage == "all":
            stages.execute_all(cfg, force=args.force)
        else:
            stages.execute(args.stage, cfg, force=args.force)
