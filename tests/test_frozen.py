"""Training on a frozen encoder's cached features: the same numbers as running the encoder."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data.images import DataError
from pipeline.data.shapes import build_shapes
from pipeline.data.transforms import normalised_batch
from pipeline.data.voc import VocDataset
from pipeline.models.frozen import DecoderOnly, EncodedSet, encode
from pipeline.models.segmenter import build_segmenter


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    build_shapes(root, seed=0, size=32, n_train=6, n_val=2)
    return VocDataset(root, "train")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_segmenter("unet", "resnet18", 4, [32, 16, 8, 8, 8]).eval()


def test_cached_features_are_the_encoders_on_the_image_and_its_mirror(shapes, model):
    dataset = EncodedSet(model.encoder, shapes, shapes.mask, batch_size=4)  # two batches: 4 + 2
    images = normalised_batch([shapes.image(i) for i in shapes.ids])
    with torch.no_grad():
        for mirror in (False, True):
            expected = model.encoder(images.flip(-1) if mirror else images)
            cached = dataset.features[mirror]
            assert cached[0].shape == (6, 0, 32, 32)  # the input level keeps only its size
            for level, want in zip(cached[1:], expected[1:]):
                assert level.dtype == torch.float16
                torch.testing.assert_close(level.float(), want, rtol=2e-3, atol=2e-3)
            logits = DecoderOnly(model)([level.float() for level in cached])
            full = model(images.flip(-1) if mirror else images)
            torch.testing.assert_close(logits, full, rtol=1e-2, atol=1e-2)


def test_a_draw_pairs_features_and_target_of_the_same_view(shapes, model):
    dataset = EncodedSet(model.encoder, shapes, shapes.mask)
    seen = set()
    torch.manual_seed(0)
    for _ in range(8):
        features, target = dataset[2]
        mirror = torch.equal(features[1], dataset.features[True][1][2].float())
        assert mirror or torch.equal(features[1], dataset.features[False][1][2].float())
        mask = shapes.mask(shapes.ids[2])
        assert np.array_equal(target.numpy(), mask[:, ::-1] if mirror else mask)
        seen.add(mirror)
    assert seen == {False, True}


def test_images_of_different_sizes_are_refused_by_name(shapes, model, tmp_path):
    root = tmp_path / "mixed"
    build_shapes(root, seed=0, size=32, n_train=3, n_val=1)
    odd = VocDataset(root, "train")
    path = odd.image_path(odd.ids[1])
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(path)
    with pytest.raises(DataError, match=f"{path.name}.*same-sized"):
        EncodedSet(model.encoder, odd, odd.mask)


def test_features_are_reused_for_the_same_images_and_weights_only(tmp_path):
    root = tmp_path / "shapes"
    build_shapes(root, seed=0, size=32, n_train=3, n_val=1)
    voc = VocDataset(root, "train")
    torch.manual_seed(0)
    encoder = build_segmenter("unet", "resnet18", 4, [8] * 5).encoder
    first = EncodedSet(encoder, voc, voc.mask)
    assert EncodedSet(encoder, voc, voc.mask).features is first.features  # the upper bound's case

    with torch.no_grad():
        encoder.conv1.weight[0, 0, 0, 0] += 1
    changed_weights = EncodedSet(encoder, voc, voc.mask)
    assert changed_weights.features is not first.features
    assert not torch.equal(changed_weights.features[False][1], first.features[False][1])

    path = voc.image_path(voc.ids[0])
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(path)
    changed_image = EncodedSet(encoder, voc, voc.mask)
    expected = encode(encoder, voc, mirror=False, batch_size=64)
    for level, want in zip(changed_image.features[False], expected):
        assert torch.equal(level, want)
    assert not torch.equal(changed_image.features[False][1][0], changed_weights.features[False][1][0])
