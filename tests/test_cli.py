"""`python -m pipeline <stage>`: bad input ends in one line on stderr and exit status 2, no traceback."""
from __future__ import annotations

import pytest

from pipeline.cli import main, parse
from pipeline.runs import load_manifest


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(f"run_dir: {tmp_path}/run\ndata:\n  root: {tmp_path}/scenes\n"
                    f"  fashion_mnist_dir: {tmp_path}/no-fashion-mnist\n")
    return path


@pytest.mark.parametrize("argv", [
    ["data", "--config", "c.yaml", "run_dir=r", "cls.epochs=3"],  # the Makefile's order
    ["data", "run_dir=r", "--config", "c.yaml", "cls.epochs=3"],
    ["data", "run_dir=r", "cls.epochs=3", "--config", "c.yaml"],
])
def test_overrides_may_follow_the_config_option(argv):
    args = parse(argv)
    assert args.stage == "data" and args.config == "c.yaml"
    assert args.overrides == ["run_dir=r", "cls.epochs=3"]
    assert args.force is False


def test_runs_a_stage_with_the_makefile_command_line(config_file, tmp_path):
    argv = ["data", "--config", str(config_file), f"run_dir={tmp_path}/run2", "data.name=shapes",
            f"data.root={tmp_path}/shapes", "data.n_train=4", "data.n_val=2", "data.image_size=32",
            "cls.split=train"]
    assert main(argv) == 0
    manifest = load_manifest(tmp_path / "run2" / "data")
    assert manifest["metrics"]["sizes"] == {"train": 4, "val": 2}


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    return err


def test_unknown_key_on_the_command_line(config_file, capsys):
    assert main(["data", "--config", str(config_file), "cam.layerz=[x]"]) == 2
    err = _error_line(capsys)
    assert "cam.layerz" in err and "cam.layers" in err


def test_missing_config_file(tmp_path, capsys):
    assert main(["data", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in _error_line(capsys)


def test_stage_before_its_upstream(config_file, capsys):
    assert main(["cams", "--config", str(config_file)]) == 2
    err = _error_line(capsys)
    assert "train-cls" in err


def test_missing_dataset_is_one_line_not_a_traceback(config_file, capsys, monkeypatch):
    """Bad input gets a clear one-line error naming the file and the problem (docs/design.md,
    section 8)."""
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    assert main(["data", "--config", str(config_file)]) == 2
    err = _error_line(capsys)
    assert "no-fashion-mnist" in err and "apt-get install dataset-fashion-mnist" in err


@pytest.mark.parametrize("stage, override, key, valid", [
    ("cams", "cam.method=scorecam", "cam.method", "cam, gradcam, gradcam++"),
    ("all", "seg.labels=gtt", "seg.labels", "pseudo, affinity"),
    ("train-seg", "seg.arch=unet3", "seg.arch", "unet, deeplabv3plus"),
    ("compare-cams", "cam.fuse=median", "cam.fuse", "max, mean"),
    ("train-cls", "cls.arch=resnet19", "cls.arch", "resnet18, resnet34, resnet50"),
    ("pseudo", "pseudo.background=softmax", "pseudo.background", "constant, power"),
    ("data", "data.name=coco", "data.name", "fashion-scenes, shapes, voc, folder"),
    ("train-cls", "device=tpu", "device", "auto, cpu, cuda"),
    ("compare-cams", "eval.compare_methods=[gradcam,scorecam]", "eval.compare_methods", "gradcam++"),
])
def test_a_bad_choice_stops_before_any_stage_runs(config_file, tmp_path, capsys, stage, override, key,
                                                  valid):
    assert main([stage, "--config", str(config_file), override]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"'{key}'" in lines[0] and valid in lines[0], lines
    assert not (tmp_path / "run").exists()  # nothing was started, no folder made


@pytest.mark.parametrize("argv, expected", [
    (["train-aff"], "stage 'train-aff' is off in this config; run it with affinity.enabled=true"),
    (["pseudo-aff"], "stage 'pseudo-aff' is off in this config; run it with affinity.enabled=true"),
    (["pseudo-r2"], "stage 'pseudo-r2' is off in this config; run it with round2.enabled=true"),
    (["eval-seg-r2"], "stage 'eval-seg-r2' is off in this config; run it with round2.enabled=true"),
    (["eval-calibration", "eval.calibration=false"],
     "stage 'eval-calibration' is off in this config; run it with eval.calibration=true"),
    (["all", "seg.labels=affinity"], "'seg.labels': 'affinity' needs the stages that make those masks (affinity.enabled=true)")])
def test_switched_off_stages_and_their_masks_need_them_switched_on(config_file, tmp_path, capsys, argv,
                                                                   expected):
    assert main([argv[0], "--config", str(config_file), *argv[1:]]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, key", [
    ("cam.layers=[layer9]", "cam.layers"), ("cam.layers=[layer2,layer4.5]", "cam.layers"),
    ("cam.head_layer=fc2", "cam.head_layer"), ("eval.compare_layer_sets=[[layer3],[layer0]]",
                                               "eval.compare_layer_sets")])
def test_a_layer_the_classifier_lacks_stops_before_any_stage_runs(config_file, tmp_path, capsys,
                                                                   override, key):
    assert main(["compare-cams", "--config", str(config_file), override]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"'{key}'" in lines[0], lines
    assert "layer1, layer2, layer3, layer4" in lines[0]
    assert not (tmp_path / "run").exists()


def test_dotted_module_names_are_valid_layers(config_file):
    from pipeline.config import load_config
    from pipeline.preflight import model_settings
    cfg = model_settings(load_config(config_file, ["cam.layers=[layer4.1,layer3.0.conv2]"]))
    assert cfg.cam.layers == ["layer4.1", "layer3.0.conv2"]
