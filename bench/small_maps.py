"""Convolutions on tiny maps: oneDNN (`F.conv2d`) against unfold + one matrix product
(`pipeline.models.small_maps`), on the CPU.

Per convolution: forward and backward (input and weight gradients) of the ResNet-18 layers
whose output has at most 16 positions, at the benchmark's sizes: scenes (64 px, batches of 32)
and pretraining items (32 px, batches of 64), channels_last as training runs them. Then the
classifier's whole training step (forward, backward, AdamW) with every convolution on oneDNN
and with the tiny maps switched. Times are means over `--repeats` calls. Prints a Markdown table;
writes bench/out/small_maps.json.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.models.classifier import build_classifier
from pipeline.models.small_maps import MAX_POSITIONS, SmallMapConv2d
from pipeline.runs import git_commit
from bench_out import save

# (batch, in channels, out channels, input size, stride): layer3 and layer4 at 64 and 32 px
LAYERS = [(32, 128, 256, 8, 2), (32, 256, 256, 4, 1), (32, 256, 512, 4, 2), (32, 512, 512, 2, 1),
          (64, 128, 256, 4, 2), (64, 256, 256, 2, 1), (64, 256, 512, 2, 2), (64, 512, 512, 1, 1)]


def mean_ms(step, repeats: int) -> float:
    """Mean time of `step`: throughput is what a training run pays, slow calls included."""
    for _ in range(2):  # warm-up: oneDNN picks and caches its kernels on the first calls
        step()
    began = time.perf_counter()
    for _ in range(repeats):
        step()
    return 1000 * (time.perf_counter() - began) / repeats


def convolution_ms(conv: nn.Conv2d, x: torch.Tensor, repeats: int) -> float:
    def step():
        conv.zero_grad(set_to_none=True)
        x.grad = None
        conv(x).sum().backward()
    return mean_ms(step, repeats)


def training_step_ms(model: nn.Module, batch: int, size: int, repeats: int) -> float:
    model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    targets = (torch.rand(batch, 6) > 0.5).float()

    def step():
        loss = F.binary_cross_entropy_with_logits(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return mean_ms(step, repeats)


def classifier(switched: bool) -> nn.Module:
    torch.manual_seed(0)
    model = build_classifier("resnet18", 6)
    if not switched:
        for module in model.modules():
            if type(module) is SmallMapConv2d:
                module.__class__ = nn.Conv2d
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for batch, c_in, c_out, size, stride in LAYERS:
        conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False).to(memory_format=torch.channels_last)
        x = torch.randn(batch, c_in, size, size).contiguous(memory_format=torch.channels_last).requires_grad_()
        onednn = convolution_ms(conv, x, args.repeats)
        conv.__class__ = SmallMapConv2d
        ours = convolution_ms(conv, x, args.repeats)
        out_size = (size - 1) // stride + 1
        rows.append({"what": f"3x3 conv {c_in}->{c_out}, {size}x{size} -> {out_size}x{out_size}, batch {batch}",
                     "onednn_ms": round(onednn, 1), "ours_ms": round(ours, 1),
                     "used": out_size * out_size <= MAX_POSITIONS})
    for size, batch in ((64, 32), (32, 64)):
        onednn = training_step_ms(classifier(False), batch, size, args.repeats)
        ours = training_step_ms(classifier(True), batch, size, args.repeats)
        rows.append({"what": f"classifier training step, {size} px, batch {batch}",
                     "onednn_ms": round(onednn, 1), "ours_ms": round(ours, 1), "used": True})
    lines = [f"Tiny-map convolutions, {torch.get_num_threads()} threads, commit {git_commit()}; ms, "
             f"forward + backward, mean of {args.repeats} after 2 warm-up calls.", "",
             "| what | oneDNN (ms) | unfold + matmul (ms) | speed-up | used by the pipeline |", "|---|---|---|---|---|"]
    lines += [f"| {r['what']} | {r['onednn_ms']} | {r['ours_ms']} | {r['onednn_ms'] / r['ours_ms']:.2f}x | "
              f"{'yes' if r['used'] else 'no'} |" for r in rows]
    print("\n".join(lines))
    save("small_maps.json", {"rows": rows, "threads": torch.get_num_threads(), "commit": git_commit()})


if __name__ == "__main__":
    main()
