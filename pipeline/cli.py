"""Command line: `python -m pipeline <stage> --config FILE [key=value ...]` (stage `all`: every
stage and the upper bound in one process), and
`python -m pipeline label --images DIR [--labels CSV] --run RUN --out DIR [key=value ...]`
(the settings the run's seeds and pseudo-masks were made with, then the overrides)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pipeline import stages
from pipeline.config import load_config
from pipeline.data.images import DataError
from pipeline.errors import ConfigError
from pipeline.label import label_folder, run_config
from pipeline.runs import StageError


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    parser.add_argument("stage", choices=[*stages.STAGES, "all", "label"])
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


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        cfg = (run_config(args.run, args.overrides) if args.stage == "label"
               else load_config(args.config, args.overrides))
        if cfg.threads > 0:
            import torch
            torch.set_num_threads(cfg.threads)
        if args.stage == "label":
            return 1 if label_folder(cfg, args.run, args.images, args.labels, args.out)["failed"] else 0
        if args.stage == "all":
            stages.execute_all(cfg, force=args.force)
        else:
            stages.execute(args.stage, cfg, force=args.force)
    except (ConfigError, StageError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
