"""Training helpers: safe checkpoints, average precision, the learning-rate schedule."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from torch.utils.data import TensorDataset

from pipeline.models.seg_training import class_weights
from pipeline.runs import CheckpointError
from pipeline.train import (TrainSpec, average_precision, fit, load_checkpoint, mean_average_precision,
                            poly_lambda, save_checkpoint, training_steps)


def test_checkpoint_round_trip(tmp_path):
    payload = {"model": {"w": torch.arange(4.0)}, "epoch": 3, "history": [0.5, 0.25], "arch": "resnet18"}
    save_checkpoint(tmp_path / "m.pt", payload)
    back = load_checkpoint(tmp_path / "m.pt")
    assert back["epoch"] == 3 and back["history"] == [0.5, 0.25] and back["arch"] == "resnet18"
    assert torch.equal(back["model"]["w"], torch.arange(4.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


class Payload:
    """Any class outside torch's allow-list: unpickling it would import and run our code."""

    def __reduce__(self):
        return (print, ("this would run on load",))


def test_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    torch.save({"model": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="evil.pt.*not a loadable checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    assert "would run" not in capsys.readouterr().out
    (tmp_path / "cut.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_checkpoint(tmp_path / "cut.pt")


def test_average_precision_by_hand():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    targets = np.array([1, 0, 1, 0, 1], np.float32)
    # Positives at ranks 1, 3, 5: precisions 1/1, 2/3, 3/5 -> mean 0.7556
    assert average_precision(scores, targets) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert np.isnan(average_precision(scores, np.zeros(5, np.float32)))
    both = np.stack([scores, -scores], 1)
    labels = np.stack([targets, np.array([0, 0, 0, 0, 0], np.float32)], 1)
    value, per_class = mean_average_precision(both, labels)
    assert value == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)  # the class without positives is skipped
    assert np.isnan(per_class[1])


def test_poly_schedule_with_warmup():
    factor = poly_lambda(total_steps=100, warmup=10)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.5 ** 0.9)
    assert factor(100) == 0.0 and factor(150) == 0.0


def _count_steps(tmp_path, **schedule) -> tuple[int, dict]:
    """Optimizer steps `fit` takes on 10 samples in batches of 4 (2 full batches per epoch)."""
    data = TensorDataset(torch.randn(10, 3), torch.randn(10, 1))
    calls = []

    def loss_fn(output, target):
        calls.append(len(target))
        return torch.nn.functional.mse_loss(output, target)

    spec = TrainSpec(batch_size=4, lr=0.01, weight_decay=0.0, max_minutes=0.0, workers=0, seed=0,
                     **schedule)
    history = fit(torch.nn.Linear(3, 1), data, loss_fn, spec, tmp_path / "last.pt", {"device": "cpu"},
                  "test")
    assert set(calls) == {4}  # drop_last: never a partial batch
    return len(calls), history


def test_schedule_length_in_samples_seen(tmp_path):
    # 22 samples in batches of 4 are 5 steps: two whole epochs of 2 steps and one step of a third
    steps, history = _count_steps(tmp_path / "a", epochs=99, samples=22)
    assert steps == 5 and history["schedule_steps"] == 5 and history["epochs_run"] == 3
    steps, history = _count_steps(tmp_path / "b", epochs=3)
    assert steps == 6 and history["schedule_steps"] == 6 and history["epochs_run"] == 3
    assert training_steps(TrainSpec(1, 4, 0.1, 0, 0, 0, 0, samples=3), steps_per_epoch=2) == 1


def test_median_frequency_class_weights_by_hand():
    # frequencies 0.5, 0.25, 0.125, 0.125, 0 (absent): the median of the present ones is 0.1875
    counts = np.array([400, 200, 100, 100, 0])
    full = class_weights(counts, 1.0)
    assert full.tolist() == pytest.approx([0.375, 0.75, 1.5, 1.5, 0.0])
    assert class_weights(counts, 0.5).tolist() == pytest.approx([0.375 ** 0.5, 0.75 ** 0.5, 1.5 ** 0.5,
                                                                 1.5 ** 0.5, 0.0])
    assert class_weights(counts, 0.0) is None


def test_pretrained_groups_scale_and_freeze():
    from pipeline.train import pretrained_groups, train_mode
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    groups = pretrained_groups(model, 1e-3, 0.1, lambda name: not name.startswith("2."))
    assert [len(g["params"]) for g in groups] == [4, 2]
    assert groups[0]["lr"] == pytest.approx(1e-4) and "lr" not in groups[1]
    frozen = pretrained_groups(model, 1e-3, 0.0, lambda name: not name.startswith("2."))
    assert [len(g["params"]) for g in frozen] == [2]
    assert not any(p.requires_grad for p in model[0].parameters()) and model[2].weight.requires_grad
    train_mode(model)
    assert not model[1].training and model[2].training  # a frozen BatchNorm keeps its statistics
