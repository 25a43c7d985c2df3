"""Training-step time, peak memory and inference time per volume of the CT refiners.

    python benchmarks/refinement_benchmark.py --size seed --repeats 3
    python benchmarks/refinement_benchmark.py --size shipped
    python benchmarks/refinement_benchmark.py --size crops --refiners super_resolution

``seed``: the design sizes (``super_resolution`` 64^3 -> 256^3 on the whole volume, 2.0 M parameters; ``detail``
64^3, 5.1 M parameters, 64 px X-rays). ``shipped``: the reduced sizes of the bundle's configs and weights
(``super_resolution`` 16^3 -> 64^3 with channels 32/16/8, i.e. ``super_resolution_16to64``; ``detail`` 64^3 with
channels 16/32/64 and 64 px X-rays). ``crops``: ``super_resolution`` at the design size as
``train_super_resolution.json`` trains and runs it: a step on a batch of 32 crop pairs of 16^3 -> 64^3, inference
of a 64^3 volume in 16^3 tiles (MONAI's sliding window, overlap 0.25, Gaussian blending). A training step is the
bundle's loss (perceptual term off) with backward and an AdamW step, batch 1 unless said, AMP on CUDA; best of
``--repeats`` after a warm-up. Peak memory: CUDA's peak allocation on a GPU; on CPU the process's peak resident set
size (an upper bound that includes the Python runtime). ``--variants a b`` (0.3.0 names) still works: a is
``super_resolution``, b ``detail``.
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
    "crops": {
        "a": dict(coarse=16, batch=32, tiles_of=64, kwargs={}),
    },
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
        d, n = spec["coarse"], spec.get("batch", 1)
        inputs = (torch.rand(n, 1, d, d, d, device=device) * 2 - 1,)
        target = torch.rand(n, 1, 4 * d, 4 * d, 4 * d, device=device) * 2 - 1
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

    if spec.get("tiles_of"):  # inference on a whole coarse volume, in tiles of the training crop size
        from monai.inferers import SlidingWindowInferer

        side = spec["tiles_of"]
        volume = torch.rand(1, 1, side, side, side, device=device) * 2 - 1
        tiler = SlidingWindowInferer((spec["coarse"],) * 3, sw_batch_size=16, overlap=0.25, mode="gaussian")

        def run_net():
            return tiler(volume, net)

    else:

        def run_net():
            return net(*[x[:1] for x in inputs])

    @torch.no_grad()
    def infer():
        net.eval()
        with torch.autocast(device.type, enabled=amp):
            run_net()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_s = timed(step, device, repeats)
    train_mem = peak_memory_gib(device)
    infer_s = timed(infer, device, repeats)
    return {
        "refiner": {"a": "super_resolution", "b": "detail"}[variant],
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
    parser.add_argument("--refiners", nargs="+", choices=["super_resolution", "detail"])
    parser.add_argument("--variants", nargs="+", choices=["a", "b"], help="deprecated: --refiners")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    keys = {"super_resolution": "a", "detail": "b"}
    chosen = args.variants or [keys[r] for r in (args.refiners or keys)]
    for v in chosen:
        if v not in SIZES[args.size]:
            print(
                json.dumps({"refiner": {"a": "super_resolution", "b": "detail"}[v], "size": args.size, "skipped": True})
            )
            continue
        print(json.dumps(bench(v, args.size, device, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
