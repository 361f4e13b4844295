"""`python -m pipeline label`: pseudo-masks for a folder of new images, from a trained run.

    OUT/masks/<id>.png       palette PNG: 0 background, 1..C classes, 255 unsure
    OUT/overlays/<id>.png    the image with the mask's colours blended in, for a person to check
    OUT/records/<id>.json    one image's classes, scores and confident fraction; written last, so
                             an image with a record is done and a rerun skips it
    OUT/labels.csv           image,labels,confident_fraction (the labels CSV format train-cls reads)
    OUT/summary.json         totals, failed images, images with no class, and every record

Image-level labels come from a labels CSV when one is given, else from the classifier's sigmoid
scores above `label.score_threshold`. Masks come from seeds with the run's `cam` settings or, with
`label.masks_from=segmenter`, from the run's last segmenter's probabilities restricted to those
classes (as the second round makes its masks); either way into pseudo-masks with its `pseudo`
settings, written by `write_mask` as the stages write theirs. Seeds are computed here in batches
of same-sized images while a process pool (`pipeline.workers`) runs the CRF with a few images in
flight, so memory does not grow with the folder.
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline import distributed
from pipeline.cam.seeds import cam_head, seed_batch
from pipeline.config import Config, config_hash, load_config, to_dict
from pipeline.data.folder import LabelledImage, as_text_cell, folder_images, read_labels_csv
from pipeline.data.images import IGNORE, PALETTE, read_image, read_or_skip, resized_mask
from pipeline.data.outputs import check_apart, output_file
from pipeline.data.transforms import same_size_batches
from pipeline.models.checkpoints import (class_scores, classifier_checkpoint, load_classifier, load_segmenter,
                                        training_size)
from pipeline.refine.calibration import run_choices
from pipeline.refine.masks import MaskRule, mask_settings, pseudo_rule, segmenter_scores, write_mask
from pipeline.runs import RunOutputs, StageError, progress, read_json, write_json, write_text, write_with
from pipeline.train import load_checkpoint
from pipeline.workers import worker_pool

log = logging.getLogger("pipeline")

COLOURS = np.array(PALETTE, np.uint8).reshape(256, 3)
OVERLAY_ALPHA = 0.5
SETTINGS = "settings.json"
# Without label.max_side, images are labelled at the run's working size (data.max_side), and at
# most this many times the classifier's training size: its filters were learnt at that scale, and
# memory must not follow a phone photo's pixels.
MAX_SIDE_PER_TRAINING_SIZE = 8


@dataclass
class Job:
    """One image's work for a CRF worker."""
    item: LabelledImage
    name: str  # the image's path relative to the folder, as reports show it
    image: np.ndarray  # at the working size (`working_size`), where seeds and CRF run
    cams: np.ndarray  # [K, H, W] unnormalised fused seeds of `classes`, or the segmenter's maps
    classes: np.ndarray
    scores: np.ndarray  # the classifier's sigmoid score of every class
    full_size: tuple[int, int]  # the image file's (height, width): the mask is written at it


def output_path(out: Path, kind: str, image_key: str) -> Path:
    return output_file(Path(out) / kind, image_key, ".json" if kind == "records" else ".png")


def listed_images(images_dir: Path, labels_csv: Path | None, class_names: list[str]) -> list[LabelledImage]:
    """The CSV's rows (checked against the classifier's classes), or every image file in the folder
    with no classes yet (the classifier will predict them)."""
    if labels_csv is not None:
        return read_labels_csv(labels_csv, images_dir, class_names)
    return folder_images(images_dir)


def settings_hash(cfg: Config, classifier: Path, labels_csv: Path | None, segmenter: Path | None,
                  max_side: int) -> str:
    """What the outputs depend on: CAM, pseudo-mask and label settings, the size images are
    labelled at (`labelling_size`), classifier, segmenter (when the masks come from it), labels CSV."""
    def digest(path: Path) -> str:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    return config_hash({"cam": to_dict(cfg.cam), "pseudo": mask_settings(cfg.pseudo),
                        "label": {**to_dict(cfg.label), "max_side": max_side}, "flip": cfg.round2.flip,
                        "classifier": digest(classifier),
                        "segmenter": digest(segmenter) if segmenter else None,
                        "labels_csv": digest(labels_csv) if labels_csv else None})


def claim_output(out: Path, digest: str) -> None:
    """Resume only work made with the same settings: never mix two settings' masks in one folder."""
    path = out / SETTINGS
    if path.is_file() and read_json(path).get("hash") != digest:
        raise StageError(f"{out}: holds labels made with other settings, another classifier or "
                         f"another labels CSV; choose another --out or empty it")
    if distributed.is_main():  # every rank checks; one writes
        write_json(path, {"hash": digest})


def labelling_size(cfg: Config, state: dict) -> int:
    """The longer side images are labelled at, at most: label.max_side where set, else the run's
    working size within MAX_SIDE_PER_TRAINING_SIZE, so that a photo the run was trained on is
    labelled at the size its pseudo stage worked at."""
    if cfg.label.max_side:
        return cfg.label.max_side
    most = MAX_SIDE_PER_TRAINING_SIZE * training_size(state)
    return min(cfg.data.max_side, most) if cfg.data.max_side else most


def readable(items: Iterable[LabelledImage], images_dir: Path, failed: list[dict],
             max_side: int) -> Iterator[tuple[LabelledImage, str, tuple[int, int], np.ndarray]]:
    """(item, name, full (height, width), uint8 RGB image at most `max_side` px) for every item
    that reads; the others go to `failed`. Memory follows the working size, not the photo's
    (`read_image`)."""
    for item in items:
        name = Path(os.path.relpath(item.path, images_dir)).as_posix()  # a CSV's path may lead out
        read = read_or_skip(item.path, name, failed, max_side)
        if read is not None:
            image, full_size = read
            yield item, name, full_size, image


def seeded_jobs(model: torch.nn.Module, cfg: Config, head, batches: Iterable[list[tuple]],
                segmenter: torch.nn.Module | None = None) -> Iterator[Job]:
    """Labels (the CSV's, else scores above the threshold) and seeds of each image (or, given a
    segmenter, its `segmenter_scores`, as the second round's)."""
    for batch in batches:
        items, names, full_sizes, images = zip(*batch)
        scores = class_scores(model, list(images))
        label_sets = [item.classes if item.classes is not None
                      else np.flatnonzero(row > cfg.label.score_threshold)
                      for item, row in zip(items, scores)]
        seeded = [row for row, labels in enumerate(label_sets) if len(labels)]
        chosen, chosen_labels = [images[r] for r in seeded], [label_sets[r] for r in seeded]
        if not seeded:
            maps = []
        elif segmenter is None:
            maps = seed_batch(model, chosen, chosen_labels, cfg, head)
        else:
            maps = segmenter_scores(segmenter, chosen, chosen_labels, cfg.round2.flip)
        seeds = dict(zip(seeded, maps))
        for row, item in enumerate(items):
            cams = seeds[row] if row in seeds else np.zeros((0, *images[row].shape[:2]), np.float32)
            yield Job(item, names[row], images[row], cams, label_sets[row], scores[row], full_sizes[row])


def overlay(image: np.ndarray, mask: np.ndarray, rows: int = 256) -> np.ndarray:
    """The image with every non-background pixel (255 unsure included) blended with its colour.
    Blended a band of `rows` at a time in float32 (exact for uint8 halves), so a 24-megapixel
    photo needs no full-size float copies."""
    out = image.copy()
    for top in range(0, image.shape[0], rows):
        band, labels = out[top:top + rows], mask[top:top + rows]
        shown = labels != 0
        blended = ((1 - OVERLAY_ALPHA) * band[shown].astype(np.float32)
                   + OVERLAY_ALPHA * COLOURS[labels[shown]].astype(np.float32))
        band[shown] = np.rint(blended).astype(np.uint8)
    return out


def write_outputs(job: Job, rule: MaskRule, class_names: list[str], out: Path) -> None:
    """Mask (at the image file's size), overlay, then the record that marks the image done (runs
    in a CRF worker)."""
    mask = resized_mask(write_mask(output_path(out, "masks", job.item.id), job.image, job.cams, job.classes,
                                   rule, job.full_size), job.full_size)
    image = job.image if job.image.shape[:2] == mask.shape else read_image(job.item.path)
    picture = Image.fromarray(overlay(image, mask))
    write_with(output_path(out, "overlays", job.item.id), lambda tmp: picture.save(tmp, format="PNG"))
    write_json(output_path(out, "records", job.item.id), {
        "image": job.name, "id": job.item.id,
        "classes": [class_names[c] for c in job.classes],
        "labels_from": "csv" if job.item.classes is not None else "classifier",
        "scores": {name: round(float(s), 4) for name, s in zip(class_names, job.scores)},
        "confident_fraction": round(float((mask != IGNORE).mean()), 4)})


def write_summary(out: Path, items: list[LabelledImage], failed: list[dict], written_now: int,
                  cfg: Config, class_names: list[str]) -> dict:
    """`labels.csv` and `summary.json` from the records of every image done, in listing order."""
    records = [read_json(path) for item in items
               if (path := output_path(out, "records", item.id)).is_file()]
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["image", "labels", "confident_fraction"])
    rows = ([r["image"], ";".join(r["classes"]), str(r["confident_fraction"])] for r in records)
    writer.writerows([as_text_cell(cell) for cell in row] for row in rows)
    write_text(out / "labels.csv", table.getvalue())
    fractions = [r["confident_fraction"] for r in records]
    summary = {
        "images": len(items), "written": len(records), "written_now": written_now,
        "failed": failed, "no_class": [r["image"] for r in records if not r["classes"]],
        "class_counts": {name: sum(name in r["classes"] for r in records) for name in class_names},
        "confident_fraction_mean": round(float(np.mean(fractions)), 4) if fractions else None,
        "score_threshold": cfg.label.score_threshold,
        # the run's calibrated values where its thresholds are "auto" (`run_choices`)
        "mask_thresholds": {"high": cfg.pseudo.fg_threshold_high, "low": cfg.pseudo.fg_threshold_low},
        "cam_layers": list(cfg.cam.layers),
        "per_image": {r["image"]: r for r in records}}
    write_json(out / "summary.json", summary)
    return summary


# The stages whose settings make a label command's masks.
MADE_BY = ("cams", "pseudo")


def run_config(run: RunOutputs, overrides: list[str]) -> Config:
    """The settings a run's seeds and pseudo-masks were made with: the config stored in its
    classifier's checkpoint, with the `cam` and `pseudo` sections of its cams and pseudo
    manifests where those stages ran, round 2 on where it trained a second segmenter, then
    `overrides`. A later command that failed or ran
    with other overrides changes neither."""
    recorded = load_checkpoint(classifier_checkpoint(run.path("train-cls", "model")))["config"]
    for stage in MADE_BY:
        manifest = run.path(stage, "manifest")
        for section, settings in (read_json(manifest)["config"] if manifest.is_file() else {}).items():
            # a checkpoint from before a section existed lacks it: the schema's defaults fill the rest
            recorded[section] = {**recorded.get(section, {}), **settings}
    if run.path("train-seg-r2", "manifest").is_file():
        # A second segmenter was trained, and is the run's last, though a classifier trained
        # before round 2 was switched on records it off; pseudo-r2 recorded how it predicts.
        second_round = run.path("pseudo-r2", "manifest")
        made = read_json(second_round)["config"].get("round2", {}) if second_round.is_file() else {}
        recorded["round2"] = {**recorded.get("round2", {}), **made, "enabled": True}
    return load_config(None, [f"run_dir={run.folder}", *overrides], recorded=recorded)


def mask_segmenter(cfg: Config, run: RunOutputs,
                   class_names: list[str]) -> tuple[Path | None, torch.nn.Module | None]:
    """(checkpoint, model) of the segmenter the masks come from ((None, None) when they come from
    seeds), refused in one line when the run has none or it knows other classes than the classifier."""
    if cfg.label.masks_from != "segmenter":
        return None, None
    checkpoint = run.path("train-seg-r2" if cfg.round2.enabled else "train-seg", "model")  # the last one
    if not checkpoint.is_file():
        raise StageError(f"{checkpoint}: no trained segmenter in this run for "
                         f"label.masks_from=segmenter; train it (make) or label with label.masks_from=seeds")
    model, state = load_segmenter(checkpoint)
    if list(state["class_names"]) != class_names:
        raise StageError(f"{checkpoint}: its classes are not the classifier's {class_names}")
    return checkpoint, model


def label_folder(cfg: Config, run: RunOutputs, images_dir: Path, labels_csv: Path | None, out: Path) -> dict:
    """Pseudo-label every image of `images_dir` not done yet in `out`; returns the summary.

    Under torchrun each rank labels its share of the images (`distributed.shard`) and writes
    their files; rank 0 then writes `labels.csv` and `summary.json` from every rank's records and
    returns the summary, the other ranks only what failed and how many were written.
    """
    distributed.init(cfg.device)
    cfg = run_choices(cfg, run)
    classifier = classifier_checkpoint(run.path("train-cls", "model"))
    model, state = load_classifier(classifier)
    class_names = list(state["class_names"])
    items = listed_images(images_dir, labels_csv, class_names)
    check_apart(out, [images_dir, *filter(None, [labels_csv]), *(item.path for item in items)])
    segmenter_file, segmenter = mask_segmenter(cfg, run, class_names)
    max_side = labelling_size(cfg, state)
    claim_output(out, settings_hash(cfg, classifier, labels_csv, segmenter_file, max_side))
    todo = distributed.unwritten(items, lambda item: output_path(out, "records", item.id))
    failed: list[dict] = []
    batches = same_size_batches(readable(todo, images_dir, failed, max_side), cfg.cam.batch_size)
    rule = pseudo_rule(cfg.pseudo)
    with worker_pool(cfg.pseudo.workers) as workers:
        device = distributed.device(cfg.device)
        model.to(device)  # after the fork: no CRF worker inherits a CUDA context
        if segmenter is not None:
            segmenter.to(device)
        head = cam_head(model, cfg, list(cfg.cam.layers)) if cfg.cam.method == "cam" \
            else cfg.cam.head
        jobs = ((job, rule, class_names, out) for job in seeded_jobs(model, cfg, head, batches, segmenter))
        written = sum(1 for _ in progress(workers.map(write_outputs, jobs), total=len(todo), desc="label"))
    failed = [problem for share in distributed.gather(failed) for problem in share]
    written = sum(distributed.gather(written))  # returns once every rank has written its files
    if not distributed.is_main():
        return {"failed": failed, "written_now": written}
    summary = write_summary(out, items, failed, written, cfg, class_names)
    log.info("label: %d of %d images labelled in %s (%d failed, %d with no class)", summary["written"],
             len(items), out, len(failed), len(summary["no_class"]))
    return summary
