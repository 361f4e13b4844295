"""pipeline.config: typed config from defaults, a YAML file and dotted overrides; one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import (Config, config_hash, file_setting, from_dict, load_config, section_keys, selected,
                             to_dict)
from pipeline.errors import ConfigError
from pipeline.preflight import model_settings

REPO = Path(__file__).resolve().parents[1]
CAM_KEYS = ["splits", "method", "layers", "fuse", "batch_size"]
TOP_KEYS = ["run_dir", "seed", "threads", "data", "cls", "cam", "eval", "pseudo", "seg", "report"]


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_load_typed():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.cam.layers == [] and cfg.cam.method == "gradcam"  # empty: the backbone fills it
    assert cfg.cls.epochs == 10 and isinstance(cfg.cls.epochs, int)
    assert cfg.eval.bg_threshold == "auto" and cfg.calibrate.fixed_bg_threshold == pytest.approx(0.15)
    assert cfg.data.name == "fashion-scenes"
    assert len(cfg.data.classes) == 10


def test_file_then_overrides(tmp_path):
    path = write(tmp_path, "cls:\n  epochs: 5\n  lr: 0.01\ncam:\n  layers: [layer2]\n"
                           "data:\n  name: shapes\n")
    cfg = load_config(path, ["cam.layers=[layer3,layer4]", "cls.epochs=3", "eval.bg_threshold=0.2",
                             "pseudo.crf=false"])
    assert cfg.cam.layers == ["layer3", "layer4"]
    assert isinstance(cfg.cam.layers, list) and all(isinstance(x, str) for x in cfg.cam.layers)
    assert cfg.cls.epochs == 3 and type(cfg.cls.epochs) is int  # the command line wins
    assert cfg.cls.lr == pytest.approx(0.01) and type(cfg.cls.lr) is float  # the file wins
    assert cfg.data.name == "shapes"
    assert cfg.eval.bg_threshold == pytest.approx(0.2)
    assert cfg.pseudo.crf is False
    assert cfg.seg.epochs == 10  # untouched default


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("source", ["file", "command line"])
def test_unknown_nested_key_names_it_suggests_and_lists(tmp_path, source):
    with pytest.raises(ConfigError) as info:
        if source == "file":
            load_config(write(tmp_path, "cam:\n  layerz: [x]\n"))
        else:
            load_config(None, ["cam.layerz=[x]"])
    message = _one_line(info)
    assert "'cam.layerz'" in message
    assert "did you mean 'cam.layers'" in message
    for key in CAM_KEYS:
        assert key in message
    if source == "file":
        assert "cfg.yaml" in message


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["runn_dir=x"])
    message = _one_line(info)
    assert "'runn_dir'" in message and "did you mean 'run_dir'" in message
    for key in TOP_KEYS:
        assert key in message


@pytest.mark.parametrize("override, key", [
    ("cls.epochs=abc", "cls.epochs"),
    ("cls.lr=fast", "cls.lr"),
    ("cam.layers=5", "cam.layers"),
    ("pseudo.crf=maybe", "pseudo.crf"),
    ("cls=3", "cls"),  # a whole section replaced by a scalar
])
def test_wrong_type_names_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = _one_line(info)
    assert f"'{key}'" in message


def test_wrong_type_in_file_names_file_and_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "cls:\n  epochs: lots\n"))
    message = _one_line(info)
    assert "cfg.yaml" in message and "'cls.epochs'" in message


def test_missing_file_and_malformed_override(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml.*not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="cls.epochs"):
        load_config(None, ["cls.epochs"])
    with pytest.raises(ConfigError) as info:  # OmegaConf's own parser fails with an IndexError here
        load_config(None, ["[seg=1"])
    assert _one_line(info) == "command line: override '[seg=1': '[seg' is not a config key"


def test_config_hash_is_a_known_value_and_the_same_in_another_process():
    # Every run's manifests hold these hashes: a change of recipe reruns every stage, so it must be
    # deliberate, and this known value changes with it.
    assert config_hash({"x": 1, "y": [1, 2], "z": {"b": "text", "a": 0.5}}) == "785ddabbba654d8f"
    config = to_dict(load_config(None, ["cls.epochs=3"]))
    script = "import json, sys; from pipeline.config import config_hash; print(config_hash(json.load(sys.stdin)))"
    other = subprocess.run([sys.executable, "-c", script], input=json.dumps(config), cwd=REPO, capture_output=True,
                           text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert other.stdout.strip() == config_hash(config)


def test_config_hash_ignores_key_order_and_follows_every_value():
    a = to_dict(load_config(None, ["cls.epochs=3"]))
    assert config_hash(dict(reversed(a.items()))) == config_hash(a)
    assert config_hash({"x": 1, "y": [1, 2]}) == config_hash({"y": [1, 2], "x": 1})
    assert config_hash({"y": [1, 2]}) != config_hash({"y": [2, 1]})  # list order is content
    c = to_dict(load_config(None, ["cls.epochs=4"]))
    assert config_hash(c) != config_hash(a)
    d = to_dict(load_config(None, ["cls.epochs=3", "cam.layers=[layer3,layer4]"]))
    assert config_hash(d) != config_hash(a)
    # Section hashes only move with their own section.
    assert config_hash(a["cam"]) == config_hash(c["cam"])
    assert config_hash(a["cls"]) != config_hash(c["cls"])


def test_to_dict_from_dict_round_trip():
    cfg = load_config(None, ["cam.layers=[layer3,layer4]", "seg.lr=0.5", "data.n_val=7"])
    data = to_dict(cfg)
    json.dumps(data)  # plain JSON-friendly data
    assert from_dict(data) == cfg


def test_a_config_file_starts_from_its_base(tmp_path):
    (tmp_path / "parent.yaml").write_text("seed: 5\ncls:\n  epochs: 3\n  lr: 0.5\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text("base: ../parent.yaml\ncls:\n  epochs: 4\n")
    cfg = load_config(tmp_path / "sub" / "child.yaml", ["cls.lr=0.25"])
    assert (cfg.seed, cfg.cls.epochs, cfg.cls.lr) == (5, 4, 0.25)  # base, then file, then command line
    assert cfg.cls.batch_size == 64  # the schema's, where no file sets it
    child = tmp_path / "sub" / "child.yaml"  # one key read unchecked, as the Makefile reads it
    assert (file_setting(child, "seed"), file_setting(child, "cls.epochs"), file_setting(child, "cls.batch_size")) == (5, 4, 64)


def test_a_missing_or_circular_base_is_one_line(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path / "a.yaml")
    assert str(error.value) == (f"{tmp_path / 'a.yaml'}: 'base: b.yaml' not found (no file "
                                f"{(tmp_path / 'b.yaml').resolve()}; a base is relative to the file naming it)")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: 'base' chain comes back to this file"):
        load_config(tmp_path / "a.yaml")


def test_quick_config_is_the_default_recipe_on_fewer_scenes():
    quick, default = load_config("configs/quick.yaml"), load_config("configs/default.yaml")
    assert quick.cam == default.cam and quick.pseudo == default.pseudo
    assert quick.seg.decoder_channels == default.seg.decoder_channels
    assert quick.data.n_train_pool < default.data.n_train_pool


def test_editing_the_comparison_reruns_compare_cams_only():
    from pipeline.stages import settings
    base = load_config(None)
    edited = load_config(None, ["eval.compare_images=7", "eval.compare_methods=[gradcam]"])
    assert settings("eval-cams", edited) == settings("eval-cams", base)
    assert settings("compare-cams", edited) != settings("compare-cams", base)
    assert settings("eval-cams", load_config(None, ["eval.bg_threshold=0.3"])) != settings("eval-cams", base)


def test_selected_keys_nest_as_the_config_does():
    cfg = load_config(None, ["seg.epochs=3"])
    round_two = {"enabled": False, "flip": True, "start_from": "encoder", "samples": 0}
    assert selected(cfg, ("seed", "seg.epochs", "round2")) == {"seed": 0, "seg": {"epochs": 3}, "round2": round_two}
    assert section_keys("round2") == ("round2.enabled", "round2.flip", "round2.start_from", "round2.samples")
    assert section_keys("round2", but=("enabled", "start_from", "samples")) == ("round2.flip",)


def test_loading_a_config_imports_no_model_code():
    """Reading a config builds no model: the model, CAM and segmentation packages stay unloaded
    (the layer names are checked by the stage runner, `pipeline.preflight`)."""
    script = ("import sys; from pipeline.config import load_config; load_config('configs/default.yaml'); "
              "print(' '.join(sorted(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.split()
    assert "pipeline.config" in loaded
    heavy = [name for name in loaded if name.startswith(("pipeline.models", "pipeline.cam",
                                                         "segmentation_models_pytorch", "torchvision.models"))]
    assert heavy == []


def test_recorded_settings_drop_keys_this_version_retired():
    """A run of an earlier camseg stored keys since retired (cam.save_layers): they are dropped from
    recorded settings, while the same key typed by a user is still an error."""
    cfg = load_config(None, ["seed=3"], recorded={"cam": {"save_layers": True, "layers": ["layer3"]},
                                                  "retired_section": {"x": 1}, "seed": 1})
    assert (cfg.cam.layers, cfg.seed) == (["layer3"], 3)
    with pytest.raises(ConfigError, match="cam.save_layers"):
        load_config(None, ["cam.save_layers=true"])


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_its_layers_are_the_models(path):
    model_settings(load_config(path))
