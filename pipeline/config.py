"""Typed configuration: dataclass schema, YAML file, dotted command-line overrides.

OmegaConf's struct mode turns an unknown key or a value of the wrong type into an error; we
catch it and re-raise it as one line that names the key and, for unknown keys, the valid ones.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import math
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Union

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.errors import ConfigError


class Range(NamedTuple):
    """The values a numeric config key (or each number of a list key) may take; None: unbounded."""
    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    below: float | None = None

    def __contains__(self, value: float) -> bool:
        return (math.isfinite(value)
                and (self.at_least is None or value >= self.at_least)
                and (self.above is None or value > self.above)
                and (self.at_most is None or value <= self.at_most)
                and (self.below is None or value < self.below))

    def __str__(self) -> str:
        bounds = [f"{sign} {bound}" for sign, bound in
                  ((">=", self.at_least), (">", self.above), ("<=", self.at_most), ("<", self.below))
                  if bound is not None]
        return " and ".join(bounds)


def ranged(default: Any, **bounds: float) -> Any:
    """A schema field whose numbers must lie in `Range(**bounds)`; a callable default makes the
    list of a list field."""
    made = {"default_factory": default} if callable(default) else {"default": default}
    return field(**made, metadata={"range": Range(**bounds)})


AUTO = "auto"  # a threshold the calibrate stage chooses


def threshold(default: float | str) -> Any:
    """A schema field for a threshold on normalised maps: a number in [0, 1] set by hand, or
    "auto", chosen by the calibrate stage."""
    return field(default=default, metadata={"range": Range(at_least=0, at_most=1), "auto": True})


# Process (and thread) counts above this are refused: a fixed cap, so that a config valid on one
# machine is valid on every machine; 0 (one per core) suits machines with more cores.
MAX_WORKERS = 64
SEED_MAX = 2 ** 32 - 1  # numpy's seeds are 32-bit


@dataclass
class DataConfig:
    # "fashion-scenes" builds the built-in benchmark into `root`; "voc" reads an existing folder;
    # "folder" reads images under `root` with image-level labels from a CSV (no masks).
    name: str = "fashion-scenes"
    root: str = "data/fashion-scenes"
    seed: int = ranged(0, at_least=0, at_most=SEED_MAX)
    # Built benchmark only ------------------------------------------------------------------
    fashion_mnist_dir: str = "/usr/share/datasets/fashion-mnist"
    image_size: int = ranged(64, at_least=1)
    n_train_pool: int = ranged(20000, at_least=1)  # scenes for the classifier (image-level labels only)
    n_train: int = ranged(2000, at_least=1)  # first scenes of the pool whose pseudo-masks are made and scored
    n_val: int = ranged(1000, at_least=1)
    classes: list[str] = field(default_factory=lambda: [
        "tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"])
    items_min: int = ranged(1, at_least=1)
    items_max: int = ranged(3, at_least=1)
    item_size_min: int = ranged(24, at_least=1)
    item_size_max: int = ranged(40, at_least=1)
    # single-item scenes on a small canvas, for the classifier's pretraining
    n_items: int = ranged(40000, at_least=0)
    item_canvas: int = ranged(32, at_least=1)
    # Reader ----------------------------------------------------------------------------------
    class_names: list[str] = field(default_factory=list)  # VOC: names of ids 1..C (0 = background)
    image_dir: str = "JPEGImages"
    mask_dir: str = "SegmentationClass"
    # Folder dataset only: rows `image,labels` (labels separated by ';'); "" = <root>/labels.csv.
    labels_csv: str = ""
    # share of the CSV's images in split "val"; "train" holds the rest
    val_fraction: float = ranged(0.1, at_least=0, at_most=1)
    # An image whose longer side exceeds this is worked on by every stage shrunk to it (aspect
    # kept): a phone photo trained, seeded and refined at full size would take tens of GiB. Masks
    # that stages write (pseudo-masks, predictions) have the image file's size; scores are
    # computed at the working size. 0 = each image's own size.
    max_side: int = ranged(1024, at_least=0)


@dataclass
class ClsConfig:
    split: str = "train_aug"
    val_split: str = "val"
    arch: str = "resnet18"
    # "none", a path to a local state dict, or a torchvision weight name for `arch` (IMAGENET1K_V1)
    weights: str = "none"
    # 1 keeps layer4 at layer3's resolution (IRN uses strides 2,2,2,1)
    last_stride: int = ranged(2, at_least=1, at_most=2)
    # training crops (smaller images are padded); 0 = the images' own size
    crop_size: int = ranged(64, at_least=0)
    # Pretraining on single-item images (image-level labels only, as ImageNet is for VOC);
    # an empty split skips it.
    pretrain_split: str = ""
    pretrain_epochs: int = ranged(1, at_least=1)
    pretrain_crop_size: int = ranged(32, at_least=0)  # 0 = the items' own size
    pretrain_batch_size: int = ranged(128, at_least=1)
    # The schedules' length in images seen (warm-up and decay follow it), so a dataset of another
    # size gets the same budget; 0 = whole passes (`pretrain_epochs`, `epochs`) over the split.
    pretrain_samples: int = ranged(0, at_least=0)
    samples: int = ranged(0, at_least=0)
    epochs: int = ranged(10, at_least=1)
    batch_size: int = ranged(64, at_least=1)
    lr: float = ranged(2e-3, above=0)
    # the backbone's learning rate relative to `lr` (the linear head's); 0 freezes it, a linear
    # probe on pretrained features (IRN trains its backbone at 0.1)
    backbone_lr_scale: float = ranged(1.0, at_least=0)
    weight_decay: float = ranged(1e-4, at_least=0)
    max_minutes: float = ranged(0.0, at_least=0)  # > 0 stops training when this wall budget is spent
    workers: int = ranged(0, at_least=0, at_most=MAX_WORKERS)


@dataclass
class CamConfig:
    splits: list[str] = field(default_factory=lambda: ["train", "val"])
    method: str = "gradcam"  # "cam", "gradcam", "gradcam++", "xgradcam", "hirescam" or "layercam"
    # with calibrate.choose_layers, the candidates: calibrate picks one of their non-empty subsets;
    # empty: `head_layer` alone
    layers: list[str] = field(default_factory=list)
    fuse: str = "max"  # across layers, after each layer's maps are max-normalised: "max", "mean" or
    # "layercam" (LayerCAM: shallow layers tanh-scaled, then max)
    # Test-time augmentation: raw maps at these input scales (1.0 must be one) and, with `flip`,
    # of their mirror images, are summed (IRN uses 1.0, 0.5, 1.5, 2.0 and flip).
    scales: list[float] = ranged(lambda: [1.0], above=0)
    flip: bool = False
    # "cam" reads the linear layer `head`, which follows global pooling of `head_layer`; for every
    # other layer a linear head is fitted on pooled features of `head_images` images of cls.split.
    # Empty: the classifier's own (a ResNet's fc and layer4, an EfficientNet's classifier and bn2).
    head: str = ""
    head_layer: str = ""
    head_images: int = ranged(2000, at_least=1)
    batch_size: int = ranged(64, at_least=1)


@dataclass
class EvalConfig:
    split: str = "train"
    # the seeds' background threshold (IRN's cam_eval_thres) that eval-cams reports beside its
    # sweep's best; "auto": calibrate's choice
    bg_threshold: Union[float, str] = threshold(AUTO)
    sweep_max: float = ranged(0.60, at_least=0, at_most=1)
    sweep_step: float = ranged(0.01, above=0, at_most=1)
    # Side-by-side comparison of methods and layer sets (one trained classifier, the configured
    # scales, flip and fusion) on the first `compare_images` images of the split; 0 skips it.
    compare_methods: list[str] = field(default_factory=lambda: [
        "cam", "gradcam", "gradcam++", "xgradcam", "hirescam", "layercam"])
    # empty: the classifier's three deepest, alone, in pairs and together (a ResNet's layer4,
    # layer3, layer2, layer3+4, layer2+3, layer2+3+4)
    compare_layer_sets: list[list[str]] = field(default_factory=list)
    compare_images: int = ranged(1000, at_least=0)
    # Stage eval-calibration: the calibrated choices scored on ground truth beside the fixed ones
    # and the oracle's. Its search runs about 20 label CRFs per image, so a recipe with a time
    # budget on large photos may leave it out (`make eval-calibration ARGS=eval.calibration=true`
    # runs it).
    calibration: bool = True


@dataclass
class CalibrateConfig:
    # Stage calibrate: the thresholds set to "auto" chosen from the seeds and the images alone
    # (no mask is read), as the values whose foreground carries the most information about the
    # pixels' colours (docs/design.md, "Calibration"). Off, an "auto" threshold takes the fixed
    # value below; on or off, the report compares the calibrated and fixed values with the
    # ground-truth oracle's.
    enabled: bool = True
    split: str = "train"
    # the thresholds it considers: `step` apart up to `max_threshold` (the high one's above the low)
    step: float = ranged(0.01, above=0, at_most=1)
    max_threshold: float = ranged(0.95, above=0, at_most=1)
    fixed_bg_threshold: float = ranged(0.15, at_least=0, at_most=1)
    fixed_fg_threshold_high: float = ranged(0.30, at_least=0, at_most=1)
    # Added to the calibrated high threshold (capped below 1): the masks' best cut is not the best
    # teacher, and a segmenter learns more from surer foreground, as IRN's training labels
    # (conf_fg_thres 0.30) sit above its seeds' cut (cam_eval_thres 0.15). Chosen per dataset
    # without masks by `make bench-teacher`; 0 keeps the cut.
    teacher_margin: float = ranged(0.0, at_least=0, below=1)
    colour_bins: int = ranged(8, at_least=2, at_most=64)  # levels per RGB channel
    # choose the seeds' layer set among the non-empty subsets of cam.layers (by the same
    # information, at each set's best background threshold); off, cam.layers are fused as given
    choose_layers: bool = True
    # the layer set with calibration off and in the report's comparison, as the fixed thresholds
    # are; empty: all of cam.layers
    fixed_layers: list[str] = field(default_factory=list)


@dataclass
class PseudoConfig:
    splits: list[str] = field(default_factory=lambda: ["train"])
    # Foreground wins where its normalised CAM exceeds the threshold; where the high and low
    # thresholds disagree after the CRF, the pixel is 255 (ignore). "auto": calibrate chooses the
    # high one, above the low one.
    fg_threshold_high: Union[float, str] = threshold(AUTO)
    fg_threshold_low: float = ranged(0.05, at_least=0, at_most=1)
    # Each class map is divided by this quantile of its values (1.0: its max) and clipped at 1
    # before the thresholds: a map whose peak is one sharp spot would otherwise keep only that
    # spot above them, and a quantile is a peak one stray pixel cannot set.
    peak_quantile: float = ranged(1.0, above=0, at_most=1)
    # "constant": the background channel is the threshold above (IRN); "power": it is
    # (1 - max_c M^c)^alpha (PSA), with alpha `bg_alpha_high` for sure foreground and
    # `bg_alpha_low` for sure background (PSA's "la" 4 and "ha" 32).
    background: str = "constant"
    bg_alpha_high: float = ranged(4.0, above=0)
    bg_alpha_low: float = ranged(32.0, above=0)
    crf: bool = True
    crf_gt_prob: float = ranged(0.7, above=0, below=1)
    crf_iterations: int = ranged(10, at_least=0)
    # Bilateral kernel of the label CRF (IRN: 50 px, 5 levels); pixel units are for a 500 px
    # photo and scaled to the image's size.
    crf_bilateral_sxy: float = ranged(50.0, above=0)
    crf_bilateral_srgb: float = ranged(5.0, above=0)
    workers: int = ranged(0, at_least=0, at_most=MAX_WORKERS)  # 0 = one per CPU core


@dataclass
class SegConfig:
    # The pseudo-masks train-seg learns from (and the second round starts from): "pseudo" (the
    # pseudo stage's) or "affinity" (the random walk's, pseudo-aff, with affinity.enabled).
    # train-seg-r2 learns from the second round's and train-seg-gt from the ground truth.
    labels: str = "pseudo"
    split: str = "train"
    val_split: str = "val"
    arch: str = "unet"
    encoder: str = ""  # smp's name; empty: the classifier's architecture (tu-<name> for timm's)
    # "none", "classifier" (our classifier's backbone), a path, or a torchvision weight name
    encoder_weights: str = "none"
    decoder_channels: list[int] = ranged(list, at_least=1)  # U-Net only; empty = smp's default
    # the encoder's learning rate relative to seg.lr; 0 freezes it
    encoder_lr_scale: float = ranged(1.0, at_least=0)
    crop_size: int = ranged(64, at_least=0)  # 0 = the images' own size
    # images seen in training (the schedule's length); 0 = `epochs` passes
    samples: int = ranged(0, at_least=0)
    epochs: int = ranged(10, at_least=1)
    batch_size: int = ranged(32, at_least=1)
    lr: float = ranged(1e-3, above=0)
    weight_decay: float = ranged(1e-4, at_least=0)
    # Cross-entropy class weights (median frequency / the class's pixel frequency in the training
    # targets) raised to this power: 0 = unweighted, 1 = full median-frequency balancing.
    class_balance: float = ranged(0.0, at_least=0)
    max_minutes: float = ranged(0.0, at_least=0)
    workers: int = ranged(0, at_least=0, at_most=MAX_WORKERS)
    # With a frozen encoder (encoder_lr_scale 0): compute its features of each image and its
    # mirror once and train the decoder on them (flip is then the only augmentation).
    cache_features: bool = False
    # eval-seg's post-processing (DeepLab's): the mirrored image's softmax averaged in, then
    # the pseudo-masks' label CRF (pseudo.crf_* parameters).
    eval_flip: bool = False
    eval_crf: bool = False


@dataclass
class AffinityConfig:
    # Inter-pixel affinity (IRN, Ahn et al. 2019): a class-boundary head on the frozen
    # classifier's features learns which pixel pairs of the confident pseudo-masks (pseudo
    # stage) share a class; the seeds then spread by a random walk along its affinities
    # (stages train-aff and pseudo-aff, run by `all` when `enabled`).
    enabled: bool = False
    split: str = "train"  # the head learns from this split's pseudo-masks
    # the finest feature level the head reads (deeper ones too): its output's stride
    stride: int = ranged(4, at_least=2, at_most=8)
    width: int = ranged(32, at_least=1)  # channels per level (IRN's edge branch)
    # pairs within this radius (at `stride`) train the head (IRN: 10)
    train_radius: int = ranged(10, at_least=1)
    samples: int = ranged(0, at_least=0)  # images seen in training; 0 = `epochs` passes
    epochs: int = ranged(3, at_least=1)  # IRN: 3
    batch_size: int = ranged(32, at_least=1)
    lr: float = ranged(1e-3, above=0)
    weight_decay: float = ranged(1e-4, at_least=0)
    max_minutes: float = ranged(0.0, at_least=0)
    workers: int = ranged(0, at_least=0, at_most=MAX_WORKERS)
    crop_size: int = ranged(64, at_least=0)  # training crops; 0 = the images' own size
    # The frozen classifier's features of each image and its mirror computed once, the head
    # trained on them (flip is then the only augmentation)
    cache_features: bool = False
    # The walk (IRN's semantic-segmentation inference): affinities within `radius`, raised to
    # `beta`, 2^exp_times steps. The walked seeds then become pseudo-masks as the seeds do in
    # the pseudo stage (its thresholds, CRF and confidence band).
    radius: int = ranged(5, at_least=1)
    beta: float = ranged(10.0, above=0)
    exp_times: int = ranged(8, at_least=0, at_most=12)
    flip: bool = True  # the boundary logits averaged with the mirrored image's (IRN)


@dataclass
class RoundTwoConfig:
    # Self-training, the second round: the first segmenter's predictions (flip-averaged when
    # `flip`), restricted to each image's known classes and made into pseudo-masks as the seeds
    # are (stage pseudo-r2, the `pseudo` section's CRF and confidence band), scored by
    # eval-pseudo-r2; then train-seg-r2 learns from them and eval-seg-r2 scores it. `all` runs
    # these stages when `enabled`.
    enabled: bool = False
    flip: bool = True
    # The weights the second segmenter starts from: "encoder" (as the first: seg.encoder_weights)
    # or "segmenter" (the first segmenter's, fine-tuned on the second round's masks, which a
    # shorter schedule can then afford)
    start_from: str = "encoder"
    # images the second segmenter sees; 0 = the first segmenter's schedule (seg.samples or epochs)
    samples: int = ranged(0, at_least=0)


@dataclass
class LabelConfig:
    # `python -m pipeline label` without a labels CSV: an image's classes are those whose sigmoid
    # score exceeds this (a score is 0.5 where the logit is 0, the decision boundary BCE trains).
    score_threshold: float = ranged(0.5, at_least=0, at_most=1)
    # Images whose longer side exceeds this are labelled at this size and their masks written at
    # the image's own size; 0 = the run's data.max_side, at most 8 x the classifier's training
    # size (512 px for 64 px scenes), or that cap alone where data.max_side is 0.
    max_side: int = ranged(0, at_least=0)
    # What the masks come from: "seeds" (the run's CAMs, as the pseudo stage makes its masks) or
    # "segmenter" (the run's last segmenter restricted to the image's classes, as pseudo-r2 does)
    masks_from: str = "seeds"


@dataclass
class ReportConfig:
    examples: int = ranged(8, at_least=0)


@dataclass
class Config:
    run_dir: str = "runs/default"
    seed: int = ranged(0, at_least=0, at_most=SEED_MAX)
    # torch intra-op threads; 0 = leave torch's default
    threads: int = ranged(0, at_least=0, at_most=MAX_WORKERS)
    # Where the trainings run: "auto" (CUDA when torch sees a GPU, else the CPU), "cpu" or "cuda";
    # under torchrun each process takes the GPU of its LOCAL_RANK.
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    cls: ClsConfig = field(default_factory=ClsConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    affinity: AffinityConfig = field(default_factory=AffinityConfig)
    seg: SegConfig = field(default_factory=SegConfig)
    round2: RoundTwoConfig = field(default_factory=RoundTwoConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    label: LabelConfig = field(default_factory=LabelConfig)


def _valid_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    for name, value in node.items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        if OmegaConf.is_dict(value):
            keys.extend(_valid_keys(value, dotted + "."))
    return keys


def _one_line(error: OmegaConfBaseException, source: str, key: str = "?") -> ConfigError:
    key = getattr(error, "full_key", None) or key
    message = str(error).splitlines()[0]
    if "not in struct" in message or "Key '" in message and "not" in message:
        valid = _valid_keys(OmegaConf.structured(Config))
        if "." in key and key in valid:  # `seg.epochs: 3` in a YAML file is one key with a dot in its name
            section, name = key.rsplit(".", 1)
            return ConfigError(f"{source}: '{key}' is one key with a dot in its name in YAML; nest it: "
                               f"{section}: {{{name}: ...}}")
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        siblings = [k.rsplit(".", 1)[-1] for k in valid
                    if (k.rsplit(".", 1)[0] if "." in k else "") == parent]
        return ConfigError(f"{source}: unknown config key '{key}'{hint} "
                           f"(valid keys{' under ' + parent if parent else ''}: {', '.join(siblings)})")
    return ConfigError(f"{source}: bad value for config key '{key}': {message}")


BASE_KEY = "base"  # a config file may start from another: `base: default.yaml` (relative to it)


def _merge(merged: Any, layer: Any, source: str, key: str = "?") -> Any:
    """`layer` on top of `merged`; one line naming `source` (and the key, where known) if it does
    not fit the schema."""
    try:
        return OmegaConf.merge(merged, layer)
    except OmegaConfBaseException as error:
        raise _one_line(error, source, key) from None
    except TypeError as error:  # OmegaConf's, for a list where the schema has a section or the reverse
        raise ConfigError(f"{source}: bad value for config key '{key}': {error}") from None


def _read_yaml(path: Path) -> Any:
    """The mapping a config file holds; one line naming the file if it is not YAML or not a mapping."""
    try:
        layer = OmegaConf.load(path)
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as error:
        problem = " ".join(str(error).split())  # YAML's messages span lines
        raise ConfigError(f"{path}: not a readable YAML file ({problem})") from None
    except OmegaConfBaseException as error:
        raise _one_line(error, str(path)) from None
    if not OmegaConf.is_dict(layer):
        raise ConfigError(f"{path}: holds a {type(layer).__name__.removesuffix('Config').lower()}, "
                          f"not a mapping of config keys")
    return layer


def _merge_file(merged: Any, path: Path, seen: tuple[Path, ...] = ()) -> Any:
    """`merged` with the YAML file at `path` on top, after the file's own `base` chain."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: '{BASE_KEY}' chain comes back to this file")
    layer = _read_yaml(path)
    base = layer.pop(BASE_KEY, None)
    if base is not None:
        base_path = path.parent / str(base)
        if not base_path.is_file():  # named from the file that names it: the path is relative to it
            raise ConfigError(f"{path}: '{BASE_KEY}: {base}' not found (no file {base_path.resolve()}; "
                              f"a base is relative to the file naming it)")
        merged = _merge_file(merged, base_path, (*seen, path.resolve()))
    return _merge(merged, layer, str(path))


def _schema_only(recorded: dict, schema: Any) -> dict:
    """`recorded` without the keys `schema` lacks: settings an earlier camseg stored that this one
    retired mean nothing now, unlike a key a user types, which stays an error."""
    kept = {}
    for key, value in recorded.items():
        if key not in schema:
            continue
        section = is_dataclass(OmegaConf.get_type(schema, key)) and isinstance(value, dict)
        kept[key] = _schema_only(value, schema[key]) if section else value
    return kept


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                recorded: dict | None = None) -> Config:
    """Schema defaults, then `recorded` settings (a run's, as `to_dict` stored them), then the YAML
    file (after the files its `base` names), then `key=value` overrides; returns a typed Config."""
    merged = OmegaConf.structured(Config)
    OmegaConf.set_struct(merged, True)
    if recorded is not None:
        merged = _merge(merged, _schema_only(recorded, merged), "recorded settings")
    if path is not None:
        merged = _merge_file(merged, Path(path))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"command line: override '{item}' is not of the form key=value")
        key = item.split("=", 1)[0]
        try:
            layer = OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as error:
            raise _one_line(error, "command line", key) from None
        except IndexError:  # OmegaConf's key parser on an unclosed bracket (`[a=1`)
            raise ConfigError(f"command line: override '{item}': '{key}' is not a config key") from None
        except yaml.YAMLError as error:  # the value is parsed as YAML: `[1` is not
            raise ConfigError(f"command line: override '{item}': the value is not valid YAML "
                              f"({' '.join(str(error).split())})") from None
        merged = _merge(merged, layer, "command line", key)
    try:  # interpolations (`${...}`) resolve here
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise _one_line(error, "config") from None
    check_ranges(cfg)
    check_choices(cfg, _choices())
    check_agreement(cfg)
    return cfg


def file_setting(path: str | Path, dotted: str) -> Any:
    """One setting of a config file, after its base chain and the schema's defaults but unchecked:
    for a caller that needs one key (the Makefile: which dataset) of a file that may not be valid."""
    return OmegaConf.select(_merge_file(OmegaConf.structured(Config), Path(path)), dotted)


SEG_LABELS = ("pseudo", "affinity")
LABEL_SOURCES = ("seeds", "segmenter")
ROUND_TWO_STARTS = ("encoder", "segmenter")
# The switch of the stages that make the masks of these `seg.labels`.
LABEL_SWITCHES = {"affinity": "affinity.enabled"}
DATASETS = ("fashion-scenes", "shapes", "voc", "folder")


def _choices() -> dict[str, tuple[str, ...]]:
    """Each key that names a choice, and its valid values (from the modules that implement them);
    those of the model and CAM modules are `pipeline.preflight`'s."""
    from pipeline.distributed import DEVICES
    from pipeline.refine.pseudo import BACKGROUNDS
    return {"data.name": DATASETS, "pseudo.background": BACKGROUNDS, "seg.labels": SEG_LABELS,
            "label.masks_from": LABEL_SOURCES, "round2.start_from": ROUND_TWO_STARTS,
            "device": DEVICES}


def dotted_value(cfg: "Config", dotted: str) -> Any:
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _ranged_numbers(node: Any, prefix: str = ""):
    """(key, number, its Range) for every number of every key whose schema field declares a range,
    list items as `key[i]` (`key[i][j]` in a list of lists)."""
    for spec in fields(node):
        key, value = f"{prefix}{spec.name}", getattr(node, spec.name)
        if is_dataclass(value):
            yield from _ranged_numbers(value, f"{key}.")
        elif spec.metadata.get("auto") and value == AUTO:
            continue
        elif "range" in spec.metadata:
            yield from _numbers(key, value, spec.metadata["range"])


def _numbers(key: str, value: Any, allowed: Range):
    if isinstance(value, list):
        for index, item in enumerate(value):
            yield from _numbers(f"{key}[{index}]", item, allowed)
    else:
        yield key, value, allowed


def check_ranges(cfg: "Config") -> None:
    """Every number lies in the range its key declares in the schema: one line naming the key, the
    value and the range otherwise (an epoch count of -2 would mark an untrained model done)."""
    for key, value, allowed in _ranged_numbers(cfg):
        if isinstance(value, str):  # a threshold field's type admits text; "auto" is its one word
            raise ConfigError(f"config key '{key}': '{value}' is neither a number nor '{AUTO}'")
        if value not in allowed:
            raise ConfigError(f"config key '{key}': {value} is out of range (allowed: {allowed})")


def check_choices(cfg: "Config", choices: dict[str, tuple[str, ...]]) -> None:
    """Each key of `choices` holds one of its valid values (each value, for a list key): a typo
    stops in one line naming the key and the valid values, before any stage does work."""
    for key, valid in choices.items():
        values = dotted_value(cfg, key)
        for value in values if isinstance(values, list) else [values]:
            if value not in valid:
                raise ConfigError(f"config key '{key}': '{value}' is not a valid choice "
                                  f"(valid: {', '.join(valid)})")


def check_agreement(cfg: "Config") -> None:
    """Settings that are valid alone but not together, in one line."""
    if 1.0 not in cfg.cam.scales:
        raise ConfigError(f"config key 'cam.scales': {cfg.cam.scales} lacks 1.0 (the maps of every scale "
                          f"are summed at its resolution)")
    switch = LABEL_SWITCHES.get(cfg.seg.labels)
    if switch and not dotted_value(cfg, switch):
        raise ConfigError(f"config key 'seg.labels': '{cfg.seg.labels}' needs the stages that make "
                          f"those masks ({switch}=true)")
    if cfg.seg.cache_features and cfg.seg.encoder_lr_scale != 0:
        raise ConfigError(f"config key 'seg.cache_features': needs a frozen encoder "
                          f"(seg.encoder_lr_scale=0, not {cfg.seg.encoder_lr_scale})")


def to_dict(section: Any) -> dict:
    """A config (or one of its sections) as plain JSON-friendly data."""
    return OmegaConf.to_container(OmegaConf.structured(section), resolve=True)


def selected(cfg: Config, keys: Iterable[str]) -> dict:
    """The values of `keys` (sections, "cls", or dotted keys, "seg.epochs") as nested plain data:
    {"cls": {...}, "seg": {"epochs": 10}}."""
    chosen: dict = {}
    for key in keys:
        *sections, last = key.split(".")
        node = chosen
        for section in sections:
            node = node.setdefault(section, {})
        value = dotted_value(cfg, key)
        node[last] = to_dict(value) if is_dataclass(value) else value
    return chosen


def section_keys(section: str, but: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The dotted keys of a section of the schema, but those named in `but`."""
    schema = {spec.name: spec for spec in fields(Config)}[section].default_factory
    return tuple(f"{section}.{spec.name}" for spec in fields(schema) if spec.name not in but)


def from_dict(data: dict) -> Config:
    """Rebuild a Config from `to_dict` output (as stored in checkpoints and run folders)."""
    merged = OmegaConf.merge(OmegaConf.structured(Config), data)
    return OmegaConf.to_object(merged)


def config_hash(data: Any) -> str:
    """A short, stable hash of JSON-friendly data (a config section, a list of input hashes)."""
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]

