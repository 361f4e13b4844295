"""explain's maps against pytorch-grad-cam doing the same work, side by side in one run.

The work: Grad-CAM, Grad-CAM++ and LayerCAM x 4 layers (the last block of each stage) x each
image's top-3 classes, for a batch of 8 images at 224 px on a torchvision ResNet-50 (random
weights), 2 threads. Ours: `pipeline.explain.explain`, one forward and one backward for all of it
(maps only: no figures). pytorch-grad-cam fuses the layers it is given and takes one target per
image per call, so the same maps take one `GradCAM(model, target_layers=[layer])` call per
method, layer and class rank: 36 forwards and backwards; it is handed the top-3 classes, computed
outside its timing. Prints a Markdown table and writes it to bench/out/explain_speed.md (JSON
beside it).
"""
from __future__ import annotations

import statistics
import time
from importlib import metadata

import torch
import torchvision

from pipeline.explain import explain
from bench_out import save

BATCH, SIZE, TOP_K = 8, 224, 3
LAYERS = ["layer1.2", "layer2.3", "layer3.5", "layer4.2"]
METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "layercam": "LayerCAM"}
REPEATS = 3


def seconds(run) -> float:
    began = time.perf_counter()
    run()
    return time.perf_counter() - began


def main() -> None:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    images = torch.randn(BATCH, 3, SIZE, SIZE)
    modules = dict(model.named_modules())
    with torch.no_grad():
        classes = model(images).topk(TOP_K, dim=1).indices

    def ours():
        explain(model, images, LAYERS, list(METHODS), TOP_K, heads={}, batch_size=BATCH)

    def theirs():
        for name in METHODS.values():
            for layer in LAYERS:
                with getattr(pytorch_grad_cam, name)(model=model, target_layers=[modules[layer]]) as cam:
                    for rank in range(TOP_K):
                        targets = [ClassifierOutputTarget(int(c)) for c in classes[:, rank]]
                        cam(input_tensor=images, targets=targets)

    ours()  # warm-up for both: the allocator and oneDNN's kernels
    # The median of ours against one run of theirs (its 36 calls already average over minutes):
    # on shared cores the load changes from one run to the next, and a minimum would favour ours.
    ours_runs = [seconds(ours) for _ in range(REPEATS)]
    ours_seconds = statistics.median(ours_runs)
    theirs_seconds = seconds(theirs)
    ratio = theirs_seconds / ours_seconds
    table = "\n".join([
        f"ResNet-50 (random weights), {BATCH} images at {SIZE} px, {len(METHODS)} methods x "
        f"{len(LAYERS)} layers x top-{TOP_K} classes, {torch.get_num_threads()} threads",
        "",
        "| | forwards + backwards | seconds | images/s |",
        "|---|---|---|---|",
        f"| ours (`explain`, maps only; median of {REPEATS}) | 1 | {ours_seconds:.2f} | "
        f"{BATCH / ours_seconds:.2f} |",
        f"| pytorch-grad-cam {metadata.version('grad-cam')} | {len(METHODS) * len(LAYERS) * TOP_K} | "
        f"{theirs_seconds:.2f} | {BATCH / theirs_seconds:.2f} |",
        f"| ours / pytorch-grad-cam | | {ratio:.1f}x faster | |",
    ])
    print(table)
    save("explain_speed.md", table + "\n")
    save("explain_speed.json", {
        "ours_seconds": round(ours_seconds, 3), "ours_runs": [round(t, 3) for t in ours_runs],
        "theirs_seconds": round(theirs_seconds, 3),
        "ratio": round(ratio, 2), "batch": BATCH, "size": SIZE, "top_k": TOP_K, "layers": LAYERS,
        "methods": list(METHODS), "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
