"""CAM extraction throughput: ours against pytorch-grad-cam and against a plain forward pass.

Same model (torchvision ResNet-18, random weights), images (batch 16 at 224 px), layers
(layer3 + layer4) and classes (3 per image) for everyone. pytorch-grad-cam takes one target per
image per call, so it makes one forward and one backward per class; ours makes one of each for
all classes and layers. Prints a table and writes JSON to bench/out/cam_speed[_cuda].json.
`--device cuda --batch 64` runs the same comparison on a GPU.
"""
from __future__ import annotations

import argparse
import time

import torch
import torchvision

from pipeline.cam import compute_cams
from bench_out import save

SIZE, CLASSES, LAYERS, REPEATS = 224, 3, ["layer3", "layer4"], 3


def best_seconds(run, device: torch.device) -> float:
    def timed() -> float:
        began = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - began

    timed()  # warm-up
    return min(timed() for _ in range(REPEATS))


def main() -> None:
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    device, batch = torch.device(args.device), args.batch
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=20).eval().to(device)
    images = torch.randn(batch, 3, SIZE, SIZE).to(device)
    classes = torch.stack([torch.randperm(20)[:CLASSES] for _ in range(batch)]).to(device)
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
        "forward only": best_seconds(forward, device),
        "ours gradcam": best_seconds(lambda: compute_cams(model, images, LAYERS, "gradcam", classes), device),
        "ours gradcam++": best_seconds(lambda: compute_cams(model, images, LAYERS, "gradcam++", classes),
                                       device),
        "pytorch-grad-cam GradCAM": best_seconds(theirs(GradCAM), device),
        "pytorch-grad-cam GradCAMPlusPlus": best_seconds(theirs(GradCAMPlusPlus), device),
    }
    result = {name: round(batch / seconds, 2) for name, seconds in rows.items()}
    ratios = {
        "gradcam vs pytorch-grad-cam": result["ours gradcam"] / result["pytorch-grad-cam GradCAM"],
        "gradcam++ vs pytorch-grad-cam": result["ours gradcam++"] / result["pytorch-grad-cam GradCAMPlusPlus"],
        "gradcam vs forward only": result["ours gradcam"] / result["forward only"],
    }
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"ResNet-18, batch {batch} at {SIZE} px, {CLASSES} classes per image, layers {'+'.join(LAYERS)}, "
          f"{where}")
    for name, rate in result.items():
        print(f"  {name:34s} {rate:8.2f} images/s")
    for name, ratio in ratios.items():
        print(f"  {name:34s} {ratio:8.2f} x")
    name = "cam_speed.json" if device.type == "cpu" else f"cam_speed_{device.type}.json"
    save(name, {"images_per_second": result, "ratios": {k: round(v, 3) for k, v in ratios.items()},
                "batch": batch, "size": SIZE, "classes": CLASSES, "layers": LAYERS, "device": where})


if __name__ == "__main__":
    main()
