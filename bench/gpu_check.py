"""The CAM engine on CUDA against the same computation on the CPU (run where a GPU is present).

ResNet-18 (random weights), 4 images at 64 px, 2 classes each, layers layer2 + layer3 + layer4:
every method, with and without test-time augmentation, under a caller's `torch.no_grad()`, must
give the CPU's maps to float32 tolerance and leave parameters' `.grad` untouched; so must the
pooled features CAM heads are fitted on and a segmenter's softmax, fed CPU batches with the model
on the GPU as compare-cams and eval-seg feed them (the softmax back on the CPU). Prints one line
per check and writes bench/out/gpu_check.json; exits non-zero if a check fails.
"""
from __future__ import annotations

import sys

import torch
import torchvision

from pipeline.cam import augmented_cams, compute_cams, fit_cam_heads
from pipeline.cam.head import pooled_features
from pipeline.models.segmenter import build_segmenter, predict_probs
from bench_out import save

LAYERS = ["layer2", "layer3", "layer4"]


def largest_relative_error(cpu: dict, cuda: dict) -> float:
    return max(float((cuda[name].cpu() - cpu[name]).abs().max() / cpu[name].abs().max().clamp_min(1e-12))
               for name in cpu)


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    # Full float32 on the GPU too: TF32 convolutions (cuDNN's default) would differ by ~1e-3.
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=6).eval()
    images = torch.randn(4, 3, 64, 64)
    classes = torch.tensor([[0, 3], [1, 2], [5, 4], [2, 0]])
    targets = torch.zeros(4, 6).scatter_(1, classes, 1.0)
    heads = fit_cam_heads(model, [images], targets, ["layer2", "layer3"])
    heads["layer4"] = model.fc
    gpu = torch.device("cuda")
    model_gpu = torchvision.models.resnet18(num_classes=6).eval()
    model_gpu.load_state_dict(model.state_dict())
    model_gpu.to(gpu)
    cuda_heads = dict(heads, layer4=model_gpu.fc)
    checks = {}
    # compare-cams fits its heads on CPU batches with the model on the GPU
    on_cpu = pooled_features(model, [images], LAYERS)
    checks["pooled features, cpu batches, cuda model"] = largest_relative_error(on_cpu, pooled_features(
        model_gpu, [images], LAYERS))
    # eval-seg, pseudo-r2 and label hand the segmenter on the GPU their batches on the CPU
    segmenter = build_segmenter("unet", "resnet18", 7, [64, 32, 16, 16, 16]).eval()
    on_cpu = predict_probs(segmenter, images, flip=True)
    on_gpu = predict_probs(segmenter.to(gpu), images, flip=True)
    checks["segmenter softmax + flip, cuda vs cpu"] = largest_relative_error(
        {"probs": on_cpu}, {"probs": on_gpu}) if on_gpu.device.type == "cpu" else float("inf")
    for method in ("cam", "gradcam", "gradcam++"):
        head = heads if method == "cam" else "fc"
        on_cpu = compute_cams(model, images, LAYERS, method, classes, head=head)
        with torch.no_grad():
            on_gpu = compute_cams(model_gpu, images.to(gpu), LAYERS, method, classes.to(gpu),
                                  head=cuda_heads if method == "cam" else "fc")
        checks[f"{method} cuda vs cpu"] = largest_relative_error(on_cpu, on_gpu)
        on_cpu = augmented_cams(model, images, LAYERS, method, classes, [1.0, 1.5], True, head)
        on_gpu = augmented_cams(model_gpu, images.to(gpu), LAYERS, method, classes.to(gpu), [1.0, 1.5], True,
                                cuda_heads if method == "cam" else "fc")
        checks[f"{method} + scales and flip, cuda vs cpu"] = largest_relative_error(on_cpu, on_gpu)
    untouched = all(p.grad is None for p in model_gpu.parameters())
    failed = [name for name, error in checks.items() if not error < 1e-3] + ([] if untouched else [".grad"])
    for name, error in checks.items():
        print(f"  {name:42s} largest relative error {error:.2e}")
    print(f"  parameters' .grad untouched: {untouched}; device: {torch.cuda.get_device_name(gpu)}")
    save("gpu_check.json", {"relative_errors": checks, "grad_untouched": untouched, "failed": failed,
                            "device": torch.cuda.get_device_name(gpu), "torch": torch.__version__})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
