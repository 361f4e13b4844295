"""Command line: `python -m pipeline <stage> --config FILE [key=value ...]`."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from pipeline.config import ConfigError, load_config
from pipeline.data.voc import DataError
from pipeline.runs import StageError
from pipeline.stages import STAGES, execute


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    parser.add_argument("stage", choices=list(STAGES))
    parser.add_argument("--config", default="configs/default.yaml", help="YAML config file")
    parser.add_argument("--force", action="store_true", help="run even if the manifest matches")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. cam.layers=[layer3,layer4]")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if cfg.threads > 0:
            import torch
            torch.set_num_threads(cfg.threads)
        execute(args.stage, cfg, force=args.force)
    except (ConfigError, StageError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
