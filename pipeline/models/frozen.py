"""Training a segmenter whose encoder is frozen: the encoder runs once per image, not per epoch.

With `seg.encoder_lr_scale: 0` the encoder's output for an image never changes, yet a training
step would spend a large share of its time recomputing it (docs/choices.md). `EncodedSet`
computes the features of every training image and of its mirror image once, in float16, and
`DecoderOnly` trains the decoder and head on them. The only augmentation left is the flip: scale
jitter and crops would need the encoder again.

Memory: two feature pyramids per image (about 380 KB for ResNet-18 at 64 px, 0.7 GiB for
2,000 images), so this is for datasets that fit; `seg.cache_features: false` trains on images.
The process keeps the last features it computed: the upper bound's segmenter, trained next in
`python -m pipeline all` with the same encoder on the same images, reuses them.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from pipeline.data.images import DataError
from pipeline.data.transforms import image_batches, normalised_batch
from pipeline.data.split import Split


class DecoderOnly(nn.Module):
    """An smp model's decoder and head, fed its encoder's features; trains them in place."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.decoder = model.decoder
        self.segmentation_head = model.segmentation_head

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.segmentation_head(self.decoder(features))


def check_same_size(voc: Split) -> None:
    """Features are stacked, so every image must have the first one's size."""
    first = voc.image_shape(voc.ids[0])
    for image_id in voc.ids:
        if voc.image_shape(image_id) != first:
            raise DataError(f"{voc.image_path(image_id)}: {voc.image_shape(image_id)} px, not "
                            f"{first} like {voc.ids[0]}; seg.cache_features needs same-sized images "
                            f"(set it to false)")


@torch.inference_mode()
def encode(encoder: nn.Module, voc: Split, mirror: bool, batch_size: int) -> list[torch.Tensor]:
    """The encoder's features of every image (mirrored first when `mirror`), computed on the
    encoder's device and stacked per level in float16 on the CPU. The first level, the input
    itself, is kept as a zero-channel tensor: decoders read only its size."""
    device = next(encoder.parameters()).device
    batches = []
    for _, images in image_batches(voc, voc.ids, batch_size):
        batch = normalised_batch(images).to(device)
        features = encoder(batch.flip(-1) if mirror else batch)
        batches.append([torch.empty(len(batch), 0, *features[0].shape[2:], dtype=features[0].dtype),
                        *(f.to("cpu", torch.float16) for f in features[1:])])
    return [torch.cat(level) for level in zip(*batches)]


def _images_and_weights(encoder: nn.Module, voc: Split) -> tuple:
    """What the features depend on: every image file (path, size, modification time), the size
    the images are worked at and the encoder's weights."""
    weights = hashlib.blake2b()
    for tensor in encoder.state_dict().values():
        weights.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    files = []
    for image_id in voc.ids:
        stat = voc.image_path(image_id).stat()
        files.append((image_id, stat.st_size, stat.st_mtime_ns))
    return str(voc.image_dir.resolve()), voc.max_side, tuple(files), weights.hexdigest()


_LAST_ENCODED: dict = {}


def encode_both(encoder: nn.Module, voc: Split, batch_size: int) -> dict[bool, list[torch.Tensor]]:
    """`encode` of every image and of its mirror, kept for the next caller that asks for the
    same images and weights (the process's last result only)."""
    key = (_images_and_weights(encoder, voc), batch_size)
    if _LAST_ENCODED.get("key") != key:
        _LAST_ENCODED.clear()  # the old features go before the new ones are made
        _LAST_ENCODED.update(key=key, features={mirror: encode(encoder, voc, mirror, batch_size)
                                                for mirror in (False, True)})
    return _LAST_ENCODED["features"]


class EncodedSet(Dataset):
    """(features, target map) per image; each draw takes the image or its mirror at random
    (from torch's generator, which the training loop seeds and checkpoints)."""

    def __init__(self, encoder: nn.Module, voc: Split, read_target,
                 device: torch.device = torch.device("cpu"), batch_size: int = 64):
        check_same_size(voc)
        encoder.eval().to(device)  # where training will run: a GPU's forward passes, not the CPU's
        self.features = encode_both(encoder, voc, batch_size)
        encoder.to("cpu")  # back where `fit` leaves models
        self.voc, self.read_target = voc, read_target

    def nbytes(self) -> int:
        return sum(f.numel() * f.element_size() for pyramid in self.features.values() for f in pyramid)

    def __len__(self) -> int:
        return len(self.voc)

    def __getitem__(self, index: int):
        mirror = bool(torch.randint(2, ()).item())
        target = self.read_target(self.voc.ids[index])
        target = np.ascontiguousarray(target[:, ::-1] if mirror else target)
        features = [level[index].float() for level in self.features[mirror]]
        return features, torch.from_numpy(target.astype(np.int64))
