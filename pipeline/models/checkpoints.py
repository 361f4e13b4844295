"""The trained models of a run, loaded from their checkpoints (`weights_only`, checked against
the run's config), and the classifier's scores over a split."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.config import Config
from pipeline.data import open_split
from pipeline.data.transforms import image_batches, normalised_batch
from pipeline.models.classifier import build_classifier
from pipeline.models.segmenter import build_segmenter
from pipeline.runs import StageError, check_recorded
from pipeline.train import load_checkpoint


# The segmenters that have their own folders, by `seg.labels`; the others are the first round's.
SEGMENTER_FOLDERS = {"gt": "segmenter-gt", "round2": "segmenter-r2"}


def segmenter_folder(cfg: Config) -> str:
    """The run folder of the segmenter `cfg` trains: on the first round's pseudo-masks, on the
    second round's, or on ground truth for the fully supervised upper bound."""
    return SEGMENTER_FOLDERS.get(cfg.seg.labels, "segmenter")


def last_segmenter_folder(cfg: Config) -> str:
    """The run folder of the last segmenter `cfg` trains on pseudo-masks: the second round's
    when it has one."""
    return SEGMENTER_FOLDERS["round2"] if cfg.round2.enabled else "segmenter"


def read_checkpoint(path: Path, expected: dict) -> dict:
    """A checkpoint's contents, refused in one line naming the file when it would run code on
    loading or was made for other settings than `expected` (which its keys must equal)."""
    state = load_checkpoint(path)
    check_recorded(path, state, expected)
    return state


def training_size(state: dict) -> int:
    """The classifier's training image size: recorded in its checkpoint, else its crop size."""
    return state.get("train_size") or state["config"]["cls"]["crop_size"]


def classifier_checkpoint(run_dir: Path) -> Path:
    checkpoint = Path(run_dir) / "classifier" / "model.pt"
    if not checkpoint.is_file():
        raise StageError(f"{checkpoint}: no trained classifier; run train-cls for this run first")
    return checkpoint


def load_classifier(run_dir: Path, cfg: Config | None = None) -> tuple[torch.nn.Module, dict]:
    """The trained classifier of a run, in eval mode, and its checkpoint's metadata. Given the
    run's `cfg`, a checkpoint trained for other classes or another architecture is refused."""
    expected = {} if cfg is None else {
        "class_names": open_split(cfg.data, cfg.cls.split).class_names,
        "arch": cfg.cls.arch, "last_stride": cfg.cls.last_stride}
    state = read_checkpoint(Path(run_dir) / "classifier" / "model.pt", expected)
    model = build_classifier(state["arch"], len(state["class_names"]), state["last_stride"])
    model.load_state_dict(state["model"])
    return model.eval(), state


@torch.inference_mode()
def class_scores(model: torch.nn.Module, images: list[np.ndarray]) -> np.ndarray:
    """Sigmoid scores [N, C] of images, computed on the model's device."""
    batch = normalised_batch(images).to(next(model.parameters()).device)
    return torch.sigmoid(model(batch)).cpu().numpy()


def predict_scores(model: torch.nn.Module, voc, batch_size: int = 128) -> np.ndarray:
    """Sigmoid scores [N, C] over a split, in its list order."""
    return np.concatenate([class_scores(model, images)
                           for _, images in image_batches(voc, voc.ids, batch_size)])


def load_segmenter(folder: Path, cfg: Config | None = None) -> tuple[torch.nn.Module, dict]:
    """The trained segmenter in `folder`, in eval mode, and its checkpoint's metadata. Given the
    run's `cfg`, a checkpoint trained for other classes or another architecture is refused."""
    expected = {} if cfg is None else {
        "class_names": open_split(cfg.data, cfg.seg.val_split).class_names, "arch": cfg.seg.arch,
        "encoder": cfg.seg.encoder, "decoder_channels": list(cfg.seg.decoder_channels)}
    state = read_checkpoint(Path(folder) / "model.pt", expected)
    model = build_segmenter(state["arch"], state["encoder"], len(state["class_names"]) + 1,
                            state["decoder_channels"])
    model.load_state_dict(state["model"])
    return model.eval(), state
