"""The training loop both networks share: seeded, checkpointed every epoch, resumable."""
from __future__ import annotations

import io
import itertools
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from pipeline import distributed
from pipeline.runs import CheckpointError, StageError, progress, write_bytes

log = logging.getLogger("pipeline")


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write `payload` atomically. Under torchrun only rank 0 writes: every rank holds the same weights."""
    if not distributed.is_main():
        return
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict:
    """Load one of our checkpoints; `weights_only` refuses anything that would run code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError or EOFError here
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: not a loadable checkpoint ({first})") from None


@dataclass
class TrainSpec:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    max_minutes: float
    workers: int
    seed: int
    warmup_fraction: float = 0.05
    samples: int = 0  # images seen over all processes; > 0 sets the length instead of `epochs`


def training_steps(spec: TrainSpec, steps_per_epoch: int) -> int:
    """The schedule's length in optimizer steps: `spec.samples` images seen (so the budget is the
    same whatever the dataset's size), else `spec.epochs` whole passes."""
    if spec.samples > 0:
        return max(1, spec.samples // (spec.batch_size * distributed.world_size()))
    return spec.epochs * steps_per_epoch


def poly_lambda(total_steps: int, warmup: int) -> Callable[[int], float]:
    """Linear warm-up, then the poly schedule (power 0.9) used by DeepLab and IRN."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, 1 - (step - warmup) / max(1, total_steps - warmup)) ** 0.9
    return factor


def train_mode(model: nn.Module) -> None:
    """`model.train()`, except that BatchNorm layers whose weights are frozen keep their statistics."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.weight is not None \
                and not module.weight.requires_grad:
            module.eval()


def pretrained_groups(model: nn.Module, lr: float, scale: float, pretrained: Callable[[str], bool]) -> list[dict]:
    """Optimizer groups: the parameters whose names `pretrained` picks at `scale` x lr (frozen,
    BatchNorm statistics too, at 0: `train_mode`), the new ones at lr. Pretrained weights learn
    more gently than the layers put on top of them, which start from random."""
    named = list(model.named_parameters())
    old = [p for name, p in named if pretrained(name)]
    new = [p for name, p in named if not pretrained(name)]
    if scale == 0:
        for parameter in old:
            parameter.requires_grad_(False)
        return [{"params": new}]
    return [{"params": old, "lr": lr * scale}, {"params": new}]


def training_loader(dataset: Dataset, spec: TrainSpec, generator: torch.Generator,
                    pin_memory: bool) -> DataLoader:
    """Shuffled batches of `spec.batch_size`; under torchrun each rank draws its own share of
    every epoch's shuffle (a DistributedSampler seeded with `spec.seed`)."""
    sampler = (DistributedSampler(dataset, shuffle=True, seed=spec.seed, drop_last=True)
               if distributed.is_distributed() else None)
    return DataLoader(dataset, batch_size=spec.batch_size, shuffle=sampler is None, sampler=sampler,
                      drop_last=True, num_workers=spec.workers, generator=generator,
                      pin_memory=pin_memory)


def to_device(inputs: torch.Tensor | list[torch.Tensor], device: torch.device):
    """A batch's inputs (a tensor, or a list of them: encoder features) on `device`, images in
    channels_last."""
    if isinstance(inputs, (list, tuple)):
        return [to_device(x, device) for x in inputs]
    layout = torch.channels_last if inputs.dim() == 4 else torch.contiguous_format
    return inputs.to(device, non_blocking=True, memory_format=layout)


def parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel under torchrun (gradients averaged over ranks), else itself."""
    if not distributed.is_distributed():
        return model
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def fit(model: nn.Module, dataset: Dataset, loss_fn: Callable, spec: TrainSpec, checkpoint: Path,
        config: dict, desc: str, param_groups: list[dict] | None = None) -> dict:
    """Train `model` in place; resumes from `checkpoint` when it exists. Returns loss history.

    `param_groups` (torch optimizer groups, e.g. with their own `lr`) default to every parameter
    that requires grad. `config` (the whole run config, stored in every checkpoint) names the
    device; the model is back on the CPU when this returns.

    Under torchrun the model trains in DistributedDataParallel: each process takes
    `spec.batch_size` images per step (one step sees world_size x batch_size images), the logged
    loss is the mean over all ranks, and rank 0 alone writes `checkpoint`.
    """
    device = distributed.device(config["device"])
    generator = seed_everything(spec.seed)
    loader = training_loader(dataset, spec, generator, pin_memory=device.type == "cuda")
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise StageError(f"{desc}: {len(loader.sampler)} images per process are fewer than one batch "
                         f"of {spec.batch_size}")
    # channels_last: the CPU's convolutions (oneDNN) run faster in it, cuDNN's too; and before
    # the optimizer loads its state, which follows the parameters' device
    model.to(device, memory_format=torch.channels_last)
    groups = param_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
    # fused: one kernel over all parameters, half the time of the default on the CPU
    optimizer = torch.optim.AdamW(groups, lr=spec.lr, weight_decay=spec.weight_decay, fused=True)
    total = training_steps(spec, steps_per_epoch)
    epochs = math.ceil(total / steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, poly_lambda(total, warmup=max(1, int(total * spec.warmup_fraction))))
    start_epoch, history = 0, []
    if checkpoint.is_file():
        state = load_checkpoint(checkpoint)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = state["epoch"], state["history"]
        torch.set_rng_state(state["rng"])
        generator.set_state(state["loader_rng"])
        log.info("%s: resuming after epoch %d", desc, start_epoch)
    network = parallel(model, device)
    log.info("%s: training on %s, process %d of %d", desc, device, distributed.rank() + 1,
             distributed.world_size())
    began, trained = time.perf_counter(), 0
    for epoch in range(start_epoch, epochs):
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        train_mode(network)
        total_loss, seen = 0.0, 0
        steps = min(steps_per_epoch, total - epoch * steps_per_epoch)
        batches = itertools.islice(loader, steps)
        for inputs, targets in progress(batches, desc=f"{desc} {epoch + 1}/{epochs}", total=steps):
            loss = loss_fn(network(to_device(inputs, device)), targets.to(device, non_blocking=True))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(targets)
            seen += len(targets)
        total_loss, seen = (sum(values) for values in zip(*distributed.gather((total_loss, seen))))
        trained += seen
        history.append(total_loss / seen)
        log.info("%s epoch %d/%d: loss %.4f", desc, epoch + 1, epochs, history[-1])
        save_checkpoint(checkpoint, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "config": config,
            "history": history, "rng": torch.get_rng_state(), "loader_rng": generator.get_state()})
        distributed.barrier()  # no rank goes on (and may resume or unlink) before the file is whole
        over_budget = spec.max_minutes > 0 and (time.perf_counter() - began) / 60 > spec.max_minutes
        if distributed.from_main(over_budget):
            log.warning("%s: time budget of %.1f min spent after epoch %d", desc, spec.max_minutes,
                        epoch + 1)
            break
    model.to("cpu")
    return {"train_loss": [round(x, 5) for x in history], "epochs_run": len(history), "schedule_steps": total,
            "images_per_second": round(trained / max(1e-9, time.perf_counter() - began), 1)}


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one class: mean precision at the rank of each positive (NaN if no positives)."""
    positives = targets.sum()
    if positives == 0:
        return math.nan
    order = np.argsort(-scores, kind="stable")
    hits = targets[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / positives)


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> tuple[float, list[float]]:
    per_class = [average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]
    return float(np.nanmean(per_class)), per_class
