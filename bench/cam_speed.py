"""CAM extraction throughput: ours against pytorch-grad-cam and against a plain forward pass.

Same model (torchvision ResNet-18, random weights), images (batch 16 at 224 px), layers
(layer3 + layer4) and classes (3 per image) for everyone. pytorch-grad-cam takes one target per
image per call, so it makes one forward and one backward per class; ours makes one of each for
all classes and layers. Prints a table and writes JSON to bench/out/cam_speed.json.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torchvision

from pipeline.cam import compute_cams

BATCH, SIZE, CLASSES, LAYERS, REPEATS = 16, 224, 3, ["layer3", "layer4"], 3


def best_seconds(run) -> float:
    run()  # warm-up
    times = []
    for _ in range(REPEATS):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return min(times)


def main() -> None:
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=20).eval()
    images = torch.randn(BATCH, 3, SIZE, SIZE)
    classes = torch.stack([torch.randperm(20)[:CLASSES] for _ in range(BATCH)])
    layers = [model.layer3, model.layer4]

    def forward():
        with torch.inference_mode():
            model(images)

    def theirs(method):
        def run():
            with method(model=model, target_layers=layers) as cam:
                for k in range(CLASSES):
                    cam(input_tensor=images, targets=[ClassifierOutputTarget(int(c)) for c in classes[:, k]])
        return run

    rows = {
        "forward only": best_seconds(forward),
        "ours gradcam": best_seconds(lambda: compute_cams(model, images, LAYERS, "gradcam", classes)),
        "ours gradcam++": best_seconds(lambda: compute_cams(model, images, LAYERS, "gradcam++", classes)),
        "pytorch-grad-cam GradCAM": best_seconds(theirs(GradCAM)),
        "pytorch-grad-cam GradCAMPlusPlus": best_seconds(theirs(GradCAMPlusPlus)),
    }
    result = {name: round(BATCH / seconds, 2) for name, seconds in rows.items()}
    ratios = {
        "gradcam vs pytorch-grad-cam": result["ours gradcam"] / result["pytorch-grad-cam GradCAM"],
        "gradcam++ vs pytorch-grad-cam": result["ours gradcam++"] / result["pytorch-grad-cam GradCAMPlusPlus"],
        "gradcam vs forward only": result["ours gradcam"] / result["forward only"],
    }
    print(f"ResNet-18, batch {BATCH} at {SIZE} px, {CLASSES} classes per image, layers {'+'.join(LAYERS)}, "
          f"{torch.get_num_threads()} threads")
    for name, rate in result.items():
        print(f"  {name:34s} {rate:8.2f} images/s")
    for name, ratio in ratios.items():
        print(f"  {name:34s} {ratio:8.2f} x")
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "cam_speed.json").write_text(json.dumps(
        {"images_per_second": result, "ratios": {k: round(v, 3) for k, v in ratios.items()},
         "batch": BATCH, "size": SIZE, "classes": CLASSES, "layers": LAYERS,
         "threads": torch.get_num_threads()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
