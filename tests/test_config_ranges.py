"""Every numeric config key declares its range in the schema, and a value outside it stops
`python -m pipeline` at load with one line naming the key, the value and the range (exit 2).

The expected ranges are written out here, from what each key means, not read from the schema.
"""
from __future__ import annotations

import dataclasses

import pytest

from pipeline.cli import main
from pipeline.config import Config, load_config


def numeric_fields(node=None, prefix: str = ""):
    """(dotted key, field) of every int, float or list-of-numbers key of the schema."""
    node = Config() if node is None else node
    for spec in dataclasses.fields(node):
        value = getattr(node, spec.name)
        if dataclasses.is_dataclass(value):
            yield from numeric_fields(value, f"{prefix}{spec.name}.")
        elif spec.type in ("int", "float", "list[int]", "list[float]"):
            yield f"{prefix}{spec.name}", spec


def test_every_numeric_key_declares_its_range():
    keys = dict(numeric_fields())
    assert {"seed", "data.val_fraction", "cam.scales", "seg.decoder_channels", "affinity.beta",
            "label.max_side", "report.examples"} <= keys.keys()  # the walk reached every section
    assert sorted(key for key, spec in keys.items() if "range" not in spec.metadata) == []


@pytest.mark.parametrize("override, line", [
    ("cls.epochs=-2", "config key 'cls.epochs': -2 is out of range (allowed: >= 1)"),
    ("cls.epochs=0", "config key 'cls.epochs': 0 is out of range (allowed: >= 1)"),
    ("pseudo.fg_threshold_high=1.5",
     "config key 'pseudo.fg_threshold_high': 1.5 is out of range (allowed: >= 0 and <= 1)"),
    ("pseudo.crf_iterations=-1", "config key 'pseudo.crf_iterations': -1 is out of range (allowed: >= 0)"),
    ("pseudo.workers=1000", "config key 'pseudo.workers': 1000 is out of range (allowed: >= 0 and <= 64)"),
    ("seg.workers=65", "config key 'seg.workers': 65 is out of range (allowed: >= 0 and <= 64)"),
    ("threads=-1", "config key 'threads': -1 is out of range (allowed: >= 0 and <= 64)"),
    ("cls.batch_size=0", "config key 'cls.batch_size': 0 is out of range (allowed: >= 1)"),
    ("seg.lr=0", "config key 'seg.lr': 0.0 is out of range (allowed: > 0)"),
    ("cls.lr=nan", "config key 'cls.lr': nan is out of range (allowed: > 0)"),
    ("cam.scales=[1.0,-0.5]", "config key 'cam.scales[1]': -0.5 is out of range (allowed: > 0)"),
    ("seg.decoder_channels=[16,0,8]", "config key 'seg.decoder_channels[1]': 0 is out of range (allowed: >= 1)"),
    ("pseudo.crf_gt_prob=1.0", "config key 'pseudo.crf_gt_prob': 1.0 is out of range (allowed: > 0 and < 1)"),
    ("data.image_size=0", "config key 'data.image_size': 0 is out of range (allowed: >= 1)"),
    ("data.items_min=0", "config key 'data.items_min': 0 is out of range (allowed: >= 1)"),
    ("cls.crop_size=-64", "config key 'cls.crop_size': -64 is out of range (allowed: >= 0)"),
    ("seed=-1", "config key 'seed': -1 is out of range (allowed: >= 0 and <= 4294967295)"),
    ("eval.sweep_step=0", "config key 'eval.sweep_step': 0.0 is out of range (allowed: > 0 and <= 1)"),
    ("affinity.exp_times=40", "config key 'affinity.exp_times': 40 is out of range (allowed: >= 0 and <= 12)"),
])
def test_value_out_of_range_is_one_line_and_exit_2(tmp_path, capsys, override, line):
    assert main(["train-cls", "--config", "configs/default.yaml", f"run_dir={tmp_path / 'run'}",
                 override]) == 2
    assert capsys.readouterr().err == f"error: {line}\n"
    assert not (tmp_path / "run").exists()


def test_bounds_themselves_are_accepted():
    cfg = load_config(None, ["cls.epochs=1", "pseudo.fg_threshold_high=1.0", "pseudo.fg_threshold_low=0",
                             "pseudo.crf_iterations=0", "pseudo.workers=64", "threads=0", "seed=4294967295",
                             "cam.scales=[1.0,0.001]", "seg.encoder_lr_scale=0", "pseudo.peak_quantile=1"])
    assert (cfg.cls.epochs, cfg.pseudo.fg_threshold_high, cfg.pseudo.workers, cfg.seed) == (1, 1.0, 64, 2 ** 32 - 1)


def test_scales_without_one_are_refused_at_load():
    with pytest.raises(ValueError, match=r"config key 'cam.scales': \[0.5, 2.0\] lacks 1.0"):
        load_config(None, ["cam.scales=[0.5,2.0]"])
