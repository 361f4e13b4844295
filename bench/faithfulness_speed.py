"""Faithfulness scores' speed: ours against pytorch-grad-cam on the same model, images and maps.

ResNet-18 (random weights), 8 images at 224 px, 3 targets each, one torch thread. The maps are
upsampled 7x7 noise (like layer4 CAMs), max-normalised, with a trace of pixel noise so that no
two pixels tie: both sides then remove the same pixels and solve the same systems.
- Confidence change: pytorch-grad-cam's `CamMultImageConfidenceChange` once per target (drop and
  increase both follow from it); ours `confidence_change` once. Best of 3 after a warm-up.
- ROAD: MoRF and LeRF over 9 percentiles, 432 imputations either way: pytorch-grad-cam's
  `ROADMostRelevantFirstAverage` and `ROADLeastRelevantFirstAverage` once per target (what its
  `ROADCombined` runs); ours `road` once. Both with their default noise 0.01. One run each.
Prints a Markdown table and writes it to bench/out/faithfulness_speed.md (and .json).
"""
from __future__ import annotations

import time

import torch
import torchvision
from torch.nn import functional as F

from pipeline.cam.faithfulness import confidence_change, road
from bench_out import save

IMAGES, SIZE, TARGETS, CLASSES, REPEATS = 8, 224, 3, 20, 3


def seconds(run, repeats: int = 1) -> float:
    def timed() -> float:
        began = time.perf_counter()
        run()
        return time.perf_counter() - began

    if repeats > 1:
        timed()  # warm-up
    return min(timed() for _ in range(repeats))


def main() -> None:
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirstAverage, ROADMostRelevantFirstAverage
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=CLASSES).eval()
    images = torch.randn(IMAGES, 3, SIZE, SIZE)
    classes = torch.stack([torch.randperm(CLASSES)[:TARGETS] for _ in range(IMAGES)])
    maps = F.interpolate(torch.rand(IMAGES, TARGETS, 7, 7), size=(SIZE, SIZE), mode="bilinear")
    maps = maps + 1e-3 * torch.rand(maps.shape)
    maps = maps / maps.amax(dim=(2, 3), keepdim=True)

    def theirs(*metrics):
        def run():
            for k in range(TARGETS):
                targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes[:, k]]
                for metric in metrics:
                    metric(images, maps[:, k].numpy(), targets, model)
        return run

    rows = {
        "confidence change": (seconds(lambda: confidence_change(model, images, maps, classes), REPEATS),
                              seconds(theirs(CamMultImageConfidenceChange()), REPEATS)),
        "ROAD MoRF + LeRF, 9 percentiles": (seconds(lambda: road(model, images, maps, classes)),
                                            seconds(theirs(ROADMostRelevantFirstAverage(),
                                                           ROADLeastRelevantFirstAverage()))),
    }
    title = (f"ResNet-18, {IMAGES} images at {SIZE} px, {TARGETS} targets each, "
             f"{torch.get_num_threads()} torch thread(s)")
    table = "\n".join([f"{title}\n", "| seconds | ours | pytorch-grad-cam | pytorch-grad-cam / ours |",
                       "|---|---|---|---|"]
                      + [f"| {name} | {ours:.2f} | {their:.2f} | {their / ours:.1f}x |"
                         for name, (ours, their) in rows.items()])
    print(table)
    save("faithfulness_speed.md", table + "\n")
    save("faithfulness_speed.json", {"seconds": {name: {"ours": round(ours, 3), "pytorch-grad-cam": round(their, 3)}
                                                 for name, (ours, their) in rows.items()},
                                     "images": IMAGES, "size": SIZE, "targets": TARGETS,
                                     "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
