"""Seeds: the fused CAMs of every present class of a batch of images, and their files.

A seed file `<id>.npz` holds `cams` (float16 [K, H, W] at image size: every layer's raw map
summed over the test-time augmentations, max-normalised, upsampled, then fused), `classes` (the
K class indices, 0-based), `layers`, `method` and `layer.<name>`: that layer's summed maps
[K, h, w] at its own resolution, max-normalised (float16 cannot hold every raw map's range, and
the fusion normalises them first anyway). From those, any subset of the layers can be fused
again without the classifier: `load_cams` does so for the layer set the calibrate stage chose.
Plain arrays, no pickles.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from pipeline.cam import augmented_cams, fit_cam_heads, fuse_layers, normalise_max
from pipeline.config import CamConfig, Config
from pipeline.data import open_split
from pipeline.data.outputs import output_file
from pipeline.data.transforms import image_batches, normalised_batch
from pipeline.runs import StageError, write_bytes


def cam_path(folder: Path, image_id: str) -> Path:
    return output_file(folder, image_id, ".npz")


def save_cams(path: Path, cams: np.ndarray, classes: np.ndarray, settings: CamConfig,
              layer_maps: dict[str, np.ndarray]) -> None:
    """One image's fused seeds and each layer's raw maps (stored max-normalised)."""
    buffer = io.BytesIO()
    extra = {f"layer.{name}": normalise_max(torch.from_numpy(maps)).numpy().astype(np.float16)
             for name, maps in layer_maps.items()}
    np.savez(buffer, cams=cams.astype(np.float16), classes=classes.astype(np.int64),
             layers=np.array(list(settings.layers)), method=np.array(settings.method), **extra)
    write_bytes(path, buffer.getvalue())


def fuse_stored(layer_maps: dict[str, np.ndarray], size: tuple[int, int], layers: list[str],
                fuse: str) -> np.ndarray:
    """float32 [K, H, W]: the stored maps of `layers` fused as the cams stage fuses."""
    return fuse_layers({name: torch.from_numpy(layer_maps[name])[None] for name in layers}, size, fuse)[0].numpy()


def load_cam_sets(path: Path, sets: list[list[str]], fuse: str) -> tuple[list[np.ndarray], np.ndarray]:
    """([float32 [K, H, W] maps fused over each layer set of `sets`], [K] class indices) of one
    image: the stored fusion for the set the file was made from, the stored layers fused again
    for any other."""
    with np.load(path, allow_pickle=False) as data:
        stored, classes = data["layers"].tolist(), data["classes"]
        fused = data["cams"].astype(np.float32)
        held = [name for name in stored if f"layer.{name}" in data.files]
        wanted = {name for layers in sets if list(layers) != stored for name in layers}
        layer_maps = {name: data[f"layer.{name}"].astype(np.float32) for name in wanted & set(held)}
    missing = sorted(wanted - set(layer_maps))
    if missing:
        raise StageError(f"{path}: no maps of layer(s) {', '.join(missing)} (it holds {', '.join(held) or 'none'}); "
                         f"rerun cams with them in cam.layers")
    size = fused.shape[1:]
    if not len(classes):  # a negative has no map to fuse
        return [fused for _ in sets], classes
    return [fused if list(layers) == stored else fuse_stored(layer_maps, size, list(layers), fuse)
            for layers in sets], classes


def load_cams(path: Path, settings: CamConfig) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [K, H, W] maps fused over `settings.layers`, [K] class indices) of one image."""
    (cams,), classes = load_cam_sets(path, [list(settings.layers)], settings.fuse)
    return cams, classes


def padded_classes(label_sets: list[np.ndarray]) -> torch.Tensor:
    """[N, K_max] class indices; short rows repeat their first class, or class 0 for an image with
    none (a negative): the extra maps are dropped."""
    width = max(1, *(len(labels) for labels in label_sets))
    rows = [np.concatenate([labels, np.full(width - len(labels), labels[0] if len(labels) else 0)])
            for labels in label_sets]
    return torch.from_numpy(np.stack(rows)).long()


def multi_hot(label_sets: list[np.ndarray], num_classes: int) -> torch.Tensor:
    targets = torch.zeros(len(label_sets), num_classes)
    for row, labels in enumerate(label_sets):
        targets[row, torch.from_numpy(labels)] = 1.0
    return targets


def cam_head(model: torch.nn.Module, cfg: Config, layers: list[str]) -> dict[str, torch.nn.Module]:
    """The `head` argument of `compute_cams` for method "cam": the classifier's own linear head for
    `cam.head_layer`, and heads fitted on pooled features of `cam.head_images` images of
    `cls.split` for every other layer (CAM's original recipe)."""
    heads = {name: dict(model.named_modules())[cfg.cam.head]
             for name in layers if name == cfg.cam.head_layer}
    others = [name for name in layers if name != cfg.cam.head_layer]
    if others:
        voc = open_split(cfg.data, cfg.cls.split)
        ids = voc.ids[:cfg.cam.head_images]
        targets = multi_hot([voc.labels(i) for i in ids], voc.num_classes)
        batches = (normalised_batch(images) for _, images in image_batches(voc, ids, cfg.cam.batch_size))
        heads.update(fit_cam_heads(model, batches, targets, others))
    return heads


def layer_batch(model, batch: torch.Tensor, label_sets: list[np.ndarray], settings: CamConfig,
                head: str | dict = "fc", layers: list[str] | None = None,
                method: str | None = None) -> dict[str, torch.Tensor]:
    """Raw maps {layer: [N, K_max, h, w]} with the configured test-time augmentation, computed on
    the model's device and returned on the CPU."""
    device = next(model.parameters()).device
    maps = augmented_cams(model, batch.to(device), list(layers or settings.layers), method or settings.method,
                          padded_classes(label_sets).to(device), settings.scales, settings.flip, head)
    return {name: layer_maps.cpu() for name, layer_maps in maps.items()}


def seeds_and_layers(model, images: list[np.ndarray], label_sets: list[np.ndarray], cfg: Config,
                     head: str | dict = "fc") -> tuple[list[np.ndarray], list[dict[str, np.ndarray]]]:
    """Per image of a batch of same-sized images: fused [K_i, H, W] maps, and {layer: raw maps}."""
    batch = normalised_batch(images)
    maps = layer_batch(model, batch, label_sets, cfg.cam, head)
    fused = fuse_layers(maps, tuple(batch.shape[-2:]), cfg.cam.fuse).numpy()
    per_layer = [{name: m[row, :len(labels)].numpy() for name, m in maps.items()}
                 for row, labels in enumerate(label_sets)]
    return [fused[row, :len(labels)] for row, labels in enumerate(label_sets)], per_layer


def seed_batch(model, images: list[np.ndarray], label_sets: list[np.ndarray], cfg: Config,
               head: str | dict = "fc") -> list[np.ndarray]:
    """Fused [K_i, H, W] maps for a batch of same-sized images (for method "cam", pass
    `head=cam_head(model, cfg, cfg.cam.layers)`, computed once)."""
    return seeds_and_layers(model, images, label_sets, cfg, head)[0]
