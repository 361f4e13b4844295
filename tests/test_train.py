"""Training helpers: safe checkpoints, average precision, the learning-rate schedule."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.runs import CheckpointError
from pipeline.train import (average_precision, load_checkpoint, mean_average_precision, poly_lambda,
                            save_checkpoint)


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
