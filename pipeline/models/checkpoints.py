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


def read_checkpoint(path: Path, expected: dict) -> dict:
    """A checkpoint's contents, refused in one line naming the file when it would run code on
    loading or was made for other settings than `expected` (which its keys must equal)."""
    state = load_checkpoint(path)
    check_recorded(path, state, expected)
    return state


def training_size(state: dict) -> int:
    """The classifier's training image size: recorded in its checkpoint, else its crop size."""
    return state.get("train_size") or state["config"]["cls"]["crop_size"]


def classifier_checkpoint(path: Path) -> Path:
    """`path` (train-cls's model), refused in one line where no classifier was trained."""
    if not Path(path).is_file():
        raise StageError(f"{path}: no trained classifier; run train-cls for this run first")
    return Path(path)


def load_classifier(path: Path, cfg: Config | None = None) -> tuple[torch.nn.Module, dict]:
    """The trained classifier of checkpoint `path`, in eval mode, and its checkpoint's metadata.
    Given the run's `cfg`, a checkpoint trained for other classes or another architecture is
    refused."""
    expected = {} if cfg is None else {
        "class_names": open_split(cfg.data, cfg.cls.split).class_names,
        "arch": cfg.cls.arch, "last_stride": cfg.cls.last_stride}
    state = read_checkpoint(path, expected)
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


def load_segmenter(path: Path, cfg: Config | None = None) -> tuple[torch.nn.Module, dict]:
    """The trained segmenter of checkpoint `path`, in eval mode, and its checkpoint's metadata.
    Given the run's `cfg`, a checkpoint trained for other classes or another architecture is
    refused."""
    expected = {} if cfg is None else {
        "class_names": open_split(cfg.data, cfg.seg.val_split).class_names, "arch": cfg.seg.arch,
        "encoder": cfg.seg.encoder, "decoder_channels": list(cfg.seg.decoder_channels)}
    state = read_checkpoint(path, expected)
    model = build_segmenter(state["arch"], state["encoder"], len(state["class_names"]) + 1,
                            state["decoder_channels"])
    model.load_state_dict(state["model"])
    return model.eval(), state
