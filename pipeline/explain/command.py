"""`python -m pipeline explain`: what a classifier looked at in a user's images.

    OUT/grids/<image>.<rank>.<class>.png   per image and target: methods x (layers, fused)
    OUT/maps/<image>.npz       maps.<method>.<layer> float16 [K, h, w] raw; fused.<method> float16
                               [K, H, W] at the input size; classes, scores, class_names, layers
    OUT/images/<image>.png     the image as the grids show it
    OUT/summary.json           model, weights, layers, methods, per image its targets and scores,
                               failed images, faithfulness means (with --faithfulness)
    OUT/index.html             all of it on one page, with relative links only

Images (files, or folders whose image files are taken in name order) of any size and mode are
resized whole to the model's input size; a file that cannot be read is named and skipped.
"""
from __future__ import annotations

import io
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline import distributed
from pipeline.cam import METHODS
from pipeline.data.folder import LabelledImage, check_unique_ids, folder_images, image_id
from pipeline.data.images import DataError, read_or_skip
from pipeline.data.outputs import check_apart, output_file, output_name
from pipeline.data.transforms import same_size_batches
from pipeline.errors import ConfigError
from pipeline.explain.anatomy import Anatomy, inspect_model
from pipeline.explain.figures import display_image, overlay_figure, save_figure
from pipeline.explain.maps import Explanation, class_indices, default_methods, explain, gap_heads, preprocess
from pipeline.explain.models import RANDOM, Classifier, named_classifier, run_classifier
from pipeline.explain.page import write_page
from pipeline.explain.ranking import FaithfulnessTotals, faithfulness_module, faithfulness_scores
from pipeline.runs import RunOutputs, git_commit, progress, write_bytes, write_json, write_with

log = logging.getLogger("pipeline")


@dataclass
class ExplainRequest:
    """What the command line asks for; None means the model's default."""
    images: list[Path]
    out: Path
    run: RunOutputs | None = None  # a camseg run, whose classifier is explained
    model: str | None = None
    weights: str = "none"
    methods: list[str] | None = None
    layers: list[str] | None = None
    top_k: int = 3
    classes: list[str] | None = None
    size: int | None = None
    batch_size: int = 8
    fuse: str = "max"
    faithfulness: bool = False
    percentiles: list[int] | None = None
    device: str = "auto"


@dataclass
class Plan:
    """The request resolved against the model, checked before any image is read."""
    classifier: Classifier
    size: int
    layers: list[str]
    methods: list[str]
    heads: dict  # {layer: linear head} of the layers CAM can use
    classes: list[int] | None


def listed(paths: list[Path]) -> list[tuple[LabelledImage, str]]:
    """(item, name) of every image among `paths`: a file as it is, a folder's image files by name."""
    entries = []
    for path in map(Path, paths):
        if path.is_dir():
            entries += [(item, item.path.relative_to(path).as_posix()) for item in folder_images(path)]
        elif path.is_file():
            entries.append((LabelledImage(image_id(path.name), path, None), path.name))
        else:
            raise DataError(f"{path}: no such image file or folder")
    check_unique_ids([item for item, _ in entries], "--images")
    return entries


def checked_layers(requested: list[str] | None, anatomy: Anatomy, model_name: str) -> list[str]:
    """The layers asked for, or the model's stages; each must output [N, C, h, w] maps."""
    layers = requested or anatomy.stages
    examples = ", ".join(anatomy.map_layers[-3:]) or "none: it has no such maps"
    if not layers:
        raise ConfigError(f"--layers: found no stages with [N, C, h, w] maps in {model_name}; "
                          f"name its layers (e.g. {examples})")
    unknown = [name for name in layers if name not in anatomy.map_layers]
    if unknown:
        raise ConfigError(f"--layers: {model_name} has no layer '{unknown[0]}' with [N, C, h, w] maps "
                          f"(its stages: {', '.join(anatomy.stages)}; or any module with such maps, "
                          f"e.g. {examples})")
    return list(layers)


def checked_methods(requested: list[str] | None, heads: dict, layers: list[str]) -> list[str]:
    methods = requested or default_methods(heads, callable_target=False)
    unknown = [method for method in methods if method not in METHODS]
    if unknown:
        raise ConfigError(f"--methods: unknown method '{unknown[0]}' (choose from {', '.join(METHODS)})")
    if "cam" in methods and not heads:
        raise ConfigError(f"--methods: 'cam' needs a linear head after global average pooling of one of "
                          f"the layers ({', '.join(layers)}); none has one")
    return list(methods)


def plan(request: ExplainRequest) -> Plan:
    classifier = run_classifier(request.run) if request.run else \
        named_classifier(request.model, request.weights)
    classifier.model.to(distributed.device(request.device))
    size = request.size or classifier.size
    anatomy = inspect_model(classifier.model, (size, size))
    layers = checked_layers(request.layers, anatomy, classifier.name)
    heads = gap_heads(classifier.model, anatomy, layers)
    methods = checked_methods(request.methods, heads, layers)
    classes = None
    if request.classes:
        try:
            classes = class_indices(request.classes, classifier.class_names, anatomy.outputs)
        except ValueError as error:
            raise ConfigError(f"--classes: {error}") from None
    if request.faithfulness:
        try:
            faithfulness_module()
        except ModuleNotFoundError:
            raise ConfigError("--faithfulness: this installation has no pipeline.cam.faithfulness") from None
    return Plan(classifier, size, layers, methods, heads, classes)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def grid_name(stem: str, result: Explanation, index: int, target: int) -> str:
    """<image>.<rank>.<class>.png: an image's grids sort by rank (zero-padded) beside each other."""
    digits = len(str(result.scores.shape[1]))
    class_id = int(result.classes[index, target])
    name = result.class_names[class_id] if result.class_names else f"class-{class_id}"
    return f"{stem}.{target + 1:0{digits}d}.{slug(name) or class_id}.png"


def save_maps(path: Path, result: Explanation, index: int) -> None:
    """One image's maps as plain arrays (no pickles): raw per method and layer, fused per method."""
    arrays = {f"maps.{method}.{layer}": maps[index].numpy().astype(np.float16)
              for method in result.methods for layer, maps in result.maps[method].items()}
    arrays.update({f"fused.{method}": result.fused[method][index].numpy().astype(np.float16)
                   for method in result.methods})
    classes = result.classes[index].numpy()
    names = [result.class_names[c] if result.class_names else str(c) for c in classes]
    buffer = io.BytesIO()
    np.savez_compressed(buffer, classes=classes.astype(np.int64), scores=result.scores[index].numpy(),
                        class_names=np.array(names), layers=np.array(result.layers),
                        methods=np.array(result.methods), **arrays)
    write_bytes(path, buffer.getvalue())


def write_image_outputs(out: Path, key: str, name: str, picture: np.ndarray,
                        full_size: tuple[int, int], result: Explanation, index: int) -> dict:
    """An image's grids, maps and picture, named by `output_name(key)`; returns its summary entry."""
    stem = output_name(key)
    maps, shown = output_file("maps", key, ".npz"), output_file("images", key, ".png")
    save_maps(out / maps, result, index)
    write_with(out / shown, lambda tmp: Image.fromarray(picture).save(tmp, format="PNG"))
    targets = []
    for target in range(result.scores.shape[1]):
        grid = Path("grids") / grid_name(stem, result, index, target)
        save_figure(overlay_figure(picture, result, index, target, name=name), out / grid)
        class_id = int(result.classes[index, target])
        targets.append({"class": class_id, "name": result.target_name(index, target),
                        "score": round(float(result.scores[index, target]), 4), "grid": grid.as_posix()})
    return {"image": name, "id": key, "size": list(full_size), "targets": targets,
            "maps": maps.as_posix(), "picture": shown.as_posix()}


def readable(entries: list[tuple[LabelledImage, str]], size: int, failed: list[dict]):
    """(item, name, full (height, width), picture at display size, image at the input size) of
    every entry that reads; the full-size pixels are dropped at once."""
    for item, name in entries:
        read = read_or_skip(item.path, name, failed)
        if read is not None:
            image, full_size = read
            resized = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
            yield item, name, full_size, display_image(image), resized


def summary_header(request: ExplainRequest, chosen: Plan) -> dict:
    classifier = chosen.classifier
    targets = {"top_k": request.top_k} if chosen.classes is None else {
        "classes": [classifier.class_names[c] if classifier.class_names else c for c in chosen.classes]}
    return {"model": classifier.name, "source": classifier.source,
            "weights": classifier.weights, "random_weights": classifier.weights == RANDOM,
            "input_size": [chosen.size, chosen.size],
            "mean": list(classifier.mean), "std": list(classifier.std), "scores": classifier.scores,
            "layers": chosen.layers, "methods": chosen.methods, "cam_layers": list(chosen.heads),
            "fuse": request.fuse, "targets": targets, "git_commit": git_commit()}


def explain_images(request: ExplainRequest) -> dict:
    """Write every output of the command for the images of `request`; returns the summary."""
    began = time.perf_counter()
    check_apart(request.out, request.images)
    chosen = plan(request)
    entries = listed(request.images)
    classifier = chosen.classifier
    failed: list[dict] = []
    per_image: list[dict] = []
    totals = FaithfulnessTotals() if request.faithfulness else None
    batches = same_size_batches(readable(entries, chosen.size, failed), request.batch_size)
    for batch in progress(batches, desc="explain"):
        items, names, full_sizes, pictures, resized = zip(*batch)
        images = preprocess(list(resized), chosen.size, classifier.mean, classifier.std)
        classes = None if chosen.classes is None else \
            torch.tensor(chosen.classes)[None].expand(len(batch), -1)
        result = explain(classifier.model, images, chosen.layers, chosen.methods, request.top_k, classes,
                         class_names=classifier.class_names, scores=classifier.scores, heads=chosen.heads,
                         fuse=request.fuse, batch_size=len(batch))
        for index, item in enumerate(items):
            per_image.append(write_image_outputs(request.out, item.id, names[index], pictures[index],
                                                 full_sizes[index], result, index))
        if totals is not None:
            totals.add(faithfulness_scores(classifier.model, images, result, request.percentiles))
    summary = {**summary_header(request, chosen), "images": len(entries), "written": len(per_image),
               "failed": failed, "per_image": per_image,
               "faithfulness": None if totals is None else {
                   "percentiles": request.percentiles, "ranking": totals.ranking()},
               "seconds": round(time.perf_counter() - began, 1)}
    write_json(request.out / "summary.json", summary)
    write_page(request.out, summary)
    log.info("explain: %d of %d images in %s (%d failed); open %s", len(per_image), len(entries),
             request.out, len(failed), request.out / "index.html")
    return summary
