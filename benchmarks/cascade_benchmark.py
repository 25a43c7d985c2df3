"""Training-step time, peak memory and DDIM inference time of the cascade stages at their default sizes.

    python benchmarks/cascade_benchmark.py --stages 1 2 3 --batch 2 --steps 10 25 50 [--profile]

Networks are built from the bundle's own configs (train.json, layered with train_stage2.json / train_stage3.json),
so the figures are those of the default sizes: 64^3 / 128^3 / 256^3 volumes, token grids 16 / 24 / 32. A training step
is the bundle trainer's loss (v-MSE + image losses + the DRR physics loss from stage 2 on) with backward and an
AdamW step, AMP on CUDA; best of ``--repeats`` after a warm-up. Inference time is one case, one sample. The
sampler's own overhead is the sampling time minus the time of the same number of bare network calls.
"""

from __future__ import annotations

import argparse
import json
import resource
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from timing import sync, timed

from custom.xray2ct.ddim import DDIMSampler
from custom.xray2ct.losses import DRRConsistencyLoss
from custom.xray2ct.memory import estimate_step_bytes
from custom.xray2ct.schedule import cosine_alpha_bar
from custom.xray2ct.trainer import CascadeDiffusionTrainer

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "xray2ct_cascade_diffusion" / "configs"
STAGE_FILES = {1: ["train.json"], 2: ["train.json", "train_stage2.json"], 3: ["train.json", "train_stage3.json"]}


def stage_config(stage: int) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / f) for f in STAGE_FILES[stage]])
    parser["bundle_root"] = str(BUNDLE.parent)
    return parser


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="print the top operators of one training step")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = device.type == "cuda"
    print(json.dumps({"device": torch.cuda.get_device_name() if amp else "cpu", "torch": torch.__version__}))
    for stage in args.stages:
        cfg = stage_config(stage)
        d, prev, w_phys = cfg["volume_size"], cfg["use_prev"], cfg["loss_weights"]["physics"]
        net = cfg.get_parsed_content("network_def", instantiate=True).to(device)
        trainer = CascadeDiffusionTrainer(
            device=device,
            max_epochs=1,
            train_data_loader=[None],
            network=net,
            optimizer=torch.optim.AdamW(net.parameters(), 5e-5),
            amp=amp,
            loss_weights={"physics": w_phys},
            physics_loss=DRRConsistencyLoss(),
        )
        b = args.batch
        ct = torch.rand(b, 1, d, d, d, device=device) * 2 - 1
        xray = torch.rand(b, 2, cfg["xray_size"], cfg["xray_size"], device=device)
        extra = {"prev": ct.clone()} if prev else {}
        opt = trainer.optimizer
        scaler = torch.amp.GradScaler(enabled=amp)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = trainer.compute_losses(net, xray, ct, extra)["total"]
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        if amp:
            torch.cuda.reset_peak_memory_stats()
        row = {"stage": stage, "volume": d, "batch": b, "params_M": sum(x.numel() for x in net.parameters()) / 1e6}
        row["train_step_s"] = timed(step, device, args.repeats)
        if amp:
            row["train_peak_mem_GiB"] = torch.cuda.max_memory_allocated() / 2**30
        else:
            # the whole process's peak resident memory so far (run one stage per process for a per-stage figure),
            # next to the estimate MemoryCheck makes before a CPU training run
            row["process_peak_rss_GiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            row["memory_check_estimate_GiB"] = estimate_step_bytes(trainer, net, d, b, cfg["xray_size"]) / 2**30
        if args.profile:
            with torch.profiler.profile() as prof:
                step()
                sync(device)
            key = "self_cuda_time_total" if amp else "self_cpu_time_total"
            print(prof.key_averages().table(sort_by=key, row_limit=12))
        net.eval()
        cond = {"xrays": xray[:1], **({"prev": ct[:1]} if prev else {})}
        t01 = torch.full((1,), 0.5, device=device)
        with torch.no_grad(), torch.autocast(device.type, enabled=amp):
            call = timed(lambda: net(ct[:1], t01, **cond), device, args.repeats)
            for n in args.steps:
                sampler = DDIMSampler(cosine_alpha_bar(1000), n)
                s = timed(lambda: sampler.sample(net, (1, 1, d, d, d), cond, device=device), device, 1)
                row[f"infer_{n}_steps_s"] = s
                row[f"sampler_overhead_{n}_pct"] = 100 * max(0.0, s - n * call) / s
        row["network_call_s"] = call
        print(json.dumps(row))
        if amp:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
