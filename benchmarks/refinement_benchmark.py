"""Training-step time, peak memory and inference time per volume of the two CT detail refiners.

    python benchmarks/refinement_benchmark.py --size seed --repeats 3
    python benchmarks/refinement_benchmark.py --size shipped

``seed``: the design sizes (variant A 64^3 -> 256^3, 2.0 M parameters; variant B 64^3, 5.1 M parameters, 64 px
X-rays). ``shipped``: the reduced sizes of the bundle's configs and weights (A 16^3 -> 64^3 with channels
32/16/8; B 64^3 with channels 16/32/64 and 64 px X-rays). A training step is the bundle's loss (perceptual term
off) with backward and an AdamW step, batch 1, AMP on CUDA; best of ``--repeats`` after a warm-up. Peak memory:
CUDA's peak allocation on a GPU; on CPU the process's peak resident set size (an upper bound that includes the
Python runtime).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys

import torch
from timing import timed

from custom.ct_refinement.detail_refiner import DetailRefiner
from custom.ct_refinement.losses import DetailRefinementLoss, SuperResolutionLoss
from custom.ct_refinement.super_resolution import SuperResolutionRefiner

SIZES = {
    "seed": {
        "a": dict(coarse=64, kwargs={}),
        "b": dict(volume=64, xray=64, kwargs={}),
    },
    "shipped": {
        "a": dict(coarse=16, kwargs=dict(channels=(32, 16, 8), num_blocks=(2, 1, 1))),
        "b": dict(
            volume=64,
            xray=64,
            kwargs=dict(channels=(16, 32, 64), num_blocks=(1, 1, 1), xray_channels=16, lift_channels=8),
        ),
    },
}


def peak_memory_gib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    scale = 2**30 if sys.platform == "darwin" else 2**20  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def bench(variant: str, size: str, device, repeats: int) -> dict:
    spec = SIZES[size][variant]
    if variant == "a":
        net = SuperResolutionRefiner(**spec["kwargs"]).to(device)
        loss_fn = SuperResolutionLoss()
        d = spec["coarse"]
        inputs = (torch.rand(1, 1, d, d, d, device=device) * 2 - 1,)
        target = torch.rand(1, 1, 4 * d, 4 * d, 4 * d, device=device) * 2 - 1
    else:
        net = DetailRefiner(**spec["kwargs"]).to(device)
        loss_fn = DetailRefinementLoss()
        d, n = spec["volume"], spec["xray"]
        inputs = (torch.rand(1, 1, d, d, d, device=device) * 2 - 1, torch.rand(1, 2, n, n, device=device))
        target = torch.rand(1, 2, d, d, d, device=device) * 2 - 1
    opt = torch.optim.AdamW(net.parameters(), lr=5e-5)
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler(enabled=amp)

    def step():
        net.train()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=amp):
            loss = loss_fn(net(*inputs), target)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    @torch.no_grad()
    def infer():
        net.eval()
        with torch.autocast(device.type, enabled=amp):
            net(*inputs)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_s = timed(step, device, repeats)
    train_mem = peak_memory_gib(device)
    infer_s = timed(infer, device, repeats)
    return {
        "variant": variant,
        "size": size,
        "parameters": sum(p.numel() for p in net.parameters()),
        "train_step_s": round(train_s, 3),
        "peak_memory_gib": round(train_mem, 2),
        "inference_s": round(infer_s, 3),
        "device": str(device),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="seed")
    parser.add_argument("--variants", nargs="+", default=["a", "b"], choices=["a", "b"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    for v in args.variants:
        print(json.dumps(bench(v, args.size, device, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
