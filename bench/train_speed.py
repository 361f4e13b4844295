"""Data loading and training speed at the config's settings, on its built dataset.

Data loading: images per second of the training datasets (decode, augment, normalise, collate;
in the main process, as `cls.workers: 0` runs it). Training: steps and images per second of one
optimiser step on batches already loaded (forward, backward, AdamW, channels_last as `fit` runs
it): the classifier on single-item scenes and on scenes, the segmenter with its frozen encoder
run every step and on cached features. Prints a Markdown table; writes bench/out/train_speed.json.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from pipeline.data import open_split  # noqa: E402
from pipeline.data.transforms import ClassificationSet, SegmentationSet, train_transform  # noqa: E402
from pipeline.models.classifier import build_classifier  # noqa: E402
from pipeline.models.frozen import DecoderOnly, EncodedSet  # noqa: E402
from pipeline.models.seg_training import param_groups, segmentation_loss  # noqa: E402
from pipeline.models.segmenter import build_segmenter  # noqa: E402
from pipeline.preflight import model_settings  # noqa: E402
from pipeline.runs import git_commit  # noqa: E402
from pipeline.train import to_device, train_mode  # noqa: E402
from bench_out import save  # noqa: E402


def loading_speed(dataset, batch_size: int, batches: int) -> tuple[float, list]:
    """Images per second through a DataLoader, and the batches it gave."""
    loader = iter(DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True))
    began = time.perf_counter()
    kept = [next(loader) for _ in range(batches)]
    return batches * batch_size / (time.perf_counter() - began), kept


def step_speed(model, batches: list, loss_fn, params, warmup: int = 2) -> float:
    """Optimiser steps per second over `batches` (the first `warmup` untimed)."""
    model.to(memory_format=torch.channels_last)
    train_mode(model)
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    for index, (inputs, targets) in enumerate(batches):
        if index == warmup:
            began = time.perf_counter()
        loss = loss_fn(model(to_device(inputs, torch.device("cpu"))), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (len(batches) - warmup) / (time.perf_counter() - began)


def single_label_loss(logits, multi_hot):
    return F.cross_entropy(logits, multi_hot.argmax(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--batches", type=int, default=12)
    args = parser.parse_args()
    cfg = model_settings(load_config(args.config))
    torch.manual_seed(0)
    rows = []

    def record(name, batch_size, load, steps=None):
        rows.append({"what": name, "batch": batch_size, "loading_images_per_second": round(load, 1),
                     "steps_per_second": round(steps, 2) if steps else None,
                     "training_images_per_second": round(steps * batch_size, 1) if steps else None})

    pool, items = open_split(cfg.data, cfg.cls.split), open_split(cfg.data, cfg.cls.pretrain_split)
    for name, voc, crop, batch, loss in (
            (f"classifier, items {cfg.cls.pretrain_crop_size} px", items, cfg.cls.pretrain_crop_size,
             cfg.cls.pretrain_batch_size, single_label_loss),
            (f"classifier, scenes {cfg.cls.crop_size} px", pool, cfg.cls.crop_size, cfg.cls.batch_size,
             F.binary_cross_entropy_with_logits)):
        load, batches = loading_speed(ClassificationSet(voc, voc.label_matrix(), train_transform(crop)), batch,
                                      args.batches)
        model = build_classifier(cfg.cls.arch, voc.num_classes, cfg.cls.last_stride)
        record(name, batch, load, step_speed(model, batches, loss, model.parameters()))

    train = open_split(cfg.data, cfg.seg.split)
    batch = cfg.seg.batch_size
    segmenter = build_segmenter(cfg.seg.arch, cfg.seg.encoder, train.num_classes + 1,
                                list(cfg.seg.decoder_channels))
    groups = param_groups(segmenter, cfg.seg.lr, cfg.seg.encoder_lr_scale)
    load, batches = loading_speed(SegmentationSet(train, train.working_mask, train_transform(cfg.seg.crop_size)), batch,
                                  args.batches)
    record("segmenter, encoder every step", batch, load, step_speed(segmenter, batches, segmentation_loss(None), groups))
    if cfg.seg.encoder_lr_scale == 0:
        few = open_split(cfg.data, cfg.seg.split)
        few.ids = few.ids[:batch * args.batches]
        began = time.perf_counter()
        cached = EncodedSet(segmenter.encoder, few, few.working_mask)
        encoding = len(few.ids) / (time.perf_counter() - began)
        load, batches = loading_speed(cached, batch, args.batches)
        rows.append({"what": "segmenter: caching the frozen encoder's features (image and mirror)",
                     "batch": None, "loading_images_per_second": round(encoding, 1),
                     "steps_per_second": None, "training_images_per_second": None})
        record("segmenter, cached features", batch, load,
               step_speed(DecoderOnly(segmenter), batches, segmentation_loss(None), groups))

    lines = [f"Training speed, `{args.config}`, {torch.get_num_threads()} threads, commit {git_commit()}.", "",
             "| what | batch | loading images/s | steps/s | training images/s |", "|---|---|---|---|---|"]
    lines += [f"| {r['what']} | {r['batch'] or ''} | {r['loading_images_per_second']} | "
              f"{r['steps_per_second'] or ''} | {r['training_images_per_second'] or ''} |" for r in rows]
    print("\n".join(lines))
    save("train_speed.json", {"config": args.config, "rows": rows, "commit": git_commit()})


if __name__ == "__main__":
    main()
