"""Albumentations pipelines (image and mask together) and torch datasets over VOC splits."""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from itertools import groupby

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.data.images import IGNORE, BadImages
from pipeline.data.split import Split

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def crop_size(voc: Split, configured: int) -> int:
    """The training crop: `configured`, or at 0 the longer side of the split's first image, so a
    dataset of another image size trains at its own scale."""
    return configured or max(voc.image_shape(voc.ids[0])[:2])


def train_transform(size: int) -> A.Compose:
    """Scale jitter, a random crop of `size` (padded with ignore where the image is smaller), flip."""
    return A.Compose([
        A.RandomScale(scale_limit=(-0.2, 0.25), p=1.0),
        A.PadIfNeeded(size, size, border_mode=0, fill=0, fill_mask=IGNORE),
        A.RandomCrop(size, size),
        A.HorizontalFlip(p=0.5),
        A.Normalize(MEAN, STD),
    ])


def eval_transform() -> A.Compose:
    return A.Compose([A.Normalize(MEAN, STD)])


def augment(transform: A.Compose, **targets: np.ndarray) -> dict:
    """Apply a random transform with a seed drawn from torch's generator. Albumentations keeps a
    generator of its own, seeded from the OS; torch's is the one the training loop seeds and saves
    in its checkpoints (and DataLoader workers reseed per epoch), so augmentations follow the
    config's seed and a resumed run draws the same ones as an uninterrupted run."""
    transform.set_random_seed(int(torch.randint(2 ** 31, ()).item()))
    return transform(**targets)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """A normalised float HWC array as a CHW tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class ClassificationSet(Dataset):
    """Images with multi-hot image-level labels."""

    def __init__(self, voc: Split, labels: np.ndarray, transform: A.Compose):
        self.voc, self.labels, self.transform = voc, labels, transform

    def __len__(self) -> int:
        return len(self.voc)

    def __getitem__(self, index: int):
        image = augment(self.transform, image=self.voc.image(self.voc.ids[index]))["image"]
        return to_tensor(image), torch.from_numpy(self.labels[index])


class SegmentationSet(Dataset):
    """Images with label maps read by `read_target(image_id)` (ground truth or pseudo-masks)."""

    def __init__(self, voc: Split, read_target, transform: A.Compose):
        self.voc, self.read_target, self.transform = voc, read_target, transform

    def __len__(self) -> int:
        return len(self.voc)

    def __getitem__(self, index: int):
        image_id = self.voc.ids[index]
        out = augment(self.transform, image=self.voc.image(image_id), mask=self.read_target(image_id))
        return to_tensor(out["image"]), torch.from_numpy(out["mask"].astype(np.int64))


def image_batches(voc: Split, ids: list[str], batch_size: int, bad: BadImages | None = None):
    """(ids, uint8 images) in list order, in batches of at most `batch_size` same-sized images.
    An image that cannot be read raises, or, given `bad`, is left out and recorded there."""
    guard = bad.skip if bad is not None else nullcontext
    for start in range(0, len(ids), batch_size):
        chunk = []
        for image_id in ids[start:start + batch_size]:
            with guard():
                chunk.append((image_id, voc.image(image_id)))
        for _, group in groupby(chunk, key=lambda item: item[1].shape):
            group = list(group)
            yield [item[0] for item in group], [item[1] for item in group]


def same_size_batches(entries: Iterable[tuple], size: int) -> Iterator[list[tuple]]:
    """Consecutive entries whose images (the last field) share a shape, at most `size` at a time."""
    batch: list[tuple] = []
    for entry in entries:
        if batch and (len(batch) == size or entry[-1].shape != batch[0][-1].shape):
            yield batch
            batch = []
        batch.append(entry)
    if batch:
        yield batch


def normalised_batch(images: list[np.ndarray]) -> torch.Tensor:
    """Same-sized uint8 RGB images as one normalised float tensor [N, 3, H, W]."""
    transform = eval_transform()
    return torch.stack([to_tensor(transform(image=image)["image"]) for image in images])
