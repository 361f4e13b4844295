"""Stage `cams`: seeds for every present class of every image, stored as `cams/<id>.npz`.

Each file holds `cams` (float16 [K, H, W] at image size: every layer's map max-normalised, then
fused), `classes` (the K class indices, 0-based), `layers` and `method`. Images already written
are skipped, so a killed run resumes.
"""
from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.cam import compute_cams, fuse_layers
from pipeline.config import Config, to_dict
from pipeline.data.transforms import image_batches, normalised_batch
from pipeline.data.voc import open_split
from pipeline.runs import progress, write_bytes
from pipeline.stages.train_cls import load_classifier


def OUTPUT(cfg: Config) -> str:
    return "cams"


def UPSTREAM(cfg: Config) -> list[str]:
    return ["train-cls"]


def SECTION(cfg: Config) -> dict:
    return to_dict(cfg.cam)


def cam_path(folder: Path, image_id: str) -> Path:
    return Path(folder) / f"{image_id}.npz"


def save_cams(path: Path, cams: np.ndarray, classes: np.ndarray, layers: list[str], method: str) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, cams=cams.astype(np.float16), classes=classes.astype(np.int64),
             layers=np.array(layers), method=np.array(method))
    write_bytes(path, buffer.getvalue())


def load_cams(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [K, H, W] fused maps, [K] class indices) of one image."""
    with np.load(path, allow_pickle=False) as data:
        return data["cams"].astype(np.float32), data["classes"]


def padded_classes(label_sets: list[np.ndarray]) -> torch.Tensor:
    """[N, K_max] class indices; short rows repeat their first class (the extra maps are dropped)."""
    width = max(len(labels) for labels in label_sets)
    rows = [np.concatenate([labels, np.full(width - len(labels), labels[0])]) for labels in label_sets]
    return torch.from_numpy(np.stack(rows)).long()


def seed_batch(model, images: list[np.ndarray], label_sets: list[np.ndarray], cfg: Config) -> list[np.ndarray]:
    """Fused [K_i, H, W] maps for a batch of same-sized images."""
    batch = normalised_batch(images)
    maps = compute_cams(model, batch, list(cfg.cam.layers), cfg.cam.method, padded_classes(label_sets))
    fused = fuse_layers(maps, tuple(batch.shape[-2:]), cfg.cam.fuse).numpy()
    return [fused[i, :len(labels)] for i, labels in enumerate(label_sets)]


def run(cfg: Config, out: Path, run_dir: Path) -> dict:
    model, _ = load_classifier(run_dir)
    written, began = 0, time.perf_counter()
    for split in cfg.cam.splits:
        voc = open_split(cfg.data, split)
        todo = [i for i in voc.ids if not cam_path(out, i).is_file()]
        batches = image_batches(voc, todo, cfg.cam.batch_size)
        for ids, images in progress(batches, desc=f"cams {split}"):
            label_sets = [voc.labels(i) for i in ids]
            for image_id, labels, maps in zip(ids, label_sets, seed_batch(model, images, label_sets, cfg)):
                save_cams(cam_path(out, image_id), maps, labels, list(cfg.cam.layers), cfg.cam.method)
                written += 1
    seconds = time.perf_counter() - began
    total = len(list(out.glob("*.npz")))
    return {"images": total, "written_now": written,
            "images_per_second": round(written / seconds, 1) if written else None}
