"""Training-step time, peak memory and DDIM inference time of the cascade stages, and of the whole chained run.

    python benchmarks/cascade_benchmark.py --stages 1 2 3 --batch 2 --steps 10 25 50 [--widths seed] [--whole]
    python benchmarks/cascade_benchmark.py --chain 1-3          # the inference a user runs, stage by stage

Networks are built from the bundle's own configs (train.json, layered with train_stage2.json / train_stage3.json).
Stages 2 and 3 train on ``crop_size``^3 sub-volumes (``--whole``: on the whole 128^3 / 256^3 volume, as before
sub-volume training). ``--widths seed`` measures the design's wider networks (channels 16/32/64, ViT 192 wide with
6 heads and 4 / 6 / 8 layers for stages 1 / 2 / 3) instead of the shipped ones. A training step is the bundle
trainer's loss (v-MSE + image losses + the DRR physics loss where its weight is not 0) with backward and an AdamW
step, AMP on CUDA; best of ``--repeats`` after a warm-up. Inference time is one case, one sample, whole volume in
tiles of ``roi_size`` for stages 2-3. The sampler's own overhead is the sampling time minus the time of the same
number of bare network calls.

``--chain`` runs the bundle's ``inference.json`` cascade (its defaults: steps, samples, tiles) on one case with the
shipped weights (random weights for a stage whose file is missing, said in the output) and prints the time of each
stage and the peak memory after each stage: GPU memory allocated, or the process's peak resident set size on a
CPU (cumulative: the peak so far, so the last figure is the run's peak).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from timing import sync, timed

from custom.xray2ct.ddim import DDIMSampler
from custom.xray2ct.inferer import DDIMInferer
from custom.xray2ct.losses import DRRConsistencyLoss
from custom.xray2ct.memory import estimate_step_bytes
from custom.xray2ct.schedule import cosine_alpha_bar
from custom.xray2ct.trainer import CascadeDiffusionTrainer

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "xray2ct_cascade_diffusion" / "configs"
STAGE_FILES = {1: ["train.json"], 2: ["train.json", "train_stage2.json"], 3: ["train.json", "train_stage3.json"]}
SEED_WIDTHS = {"channels": [16, 32, 64], "hidden_size": 192, "num_heads": 6}
SEED_VIT_DEPTH = {1: 4, 2: 6, 3: 8}


def stage_config(stage: int, widths: str = "shipped", whole: bool = False) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / f) for f in STAGE_FILES[stage]])
    parser["bundle_root"] = str(BUNDLE.parent)
    if widths == "seed":
        for key, value in {**SEED_WIDTHS, "vit_depth": SEED_VIT_DEPTH[stage]}.items():
            parser[key] = value
    if whole and stage > 1:
        parser["crop_size"] = parser["volume_size"]
    return parser


def peak_memory_gib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def chain(run: str, device) -> None:
    """Time and peak memory of each stage of the bundle's own chained inference, on one synthetic case."""
    from custom.core.bundle import build_network, make_parser, read_bundle_config
    from custom.xray2ct.inferer import CascadeInferer, DDIMInferer
    from custom.xray2ct.patch_network import PatchDenoiser

    parser = make_parser(read_bundle_config(BUNDLE.parent, "inference.json"), BUNDLE.parent, {"stages": run})
    parser["inferer"]["progress"] = False
    for later in ("stage2", "stage3"):  # random weights where none ship, so the timing can still be taken
        path = Path(parser.get_parsed_content(f"{later}#ckpt_path"))
        if not path.is_file():
            fake = Path(tempfile.mkdtemp()) / f"random_{later}.pt"
            torch.save(PatchDenoiser(**parser.get_parsed_content(f"{later}#network")).state_dict(), fake)
            parser[f"{later}#ckpt_path"] = str(fake)
            print(json.dumps({"note": f"{path} missing: {later} timed with random weights"}))
    first = build_network(parser, parser.get_parsed_content("ckpt_path"), device)
    cascade = parser.get_parsed_content("cascade")
    if isinstance(cascade, DDIMInferer):
        cascade = CascadeInferer([{"network": None, "inferer": cascade, "xray_size": parser["xray_size"]}], "1")
    rows = []

    def record(number, stage, seconds):
        rows.append({"stage": number, "volume": stage["inferer"].volume_size, "seconds": round(seconds, 2)})
        rows[-1].update(steps=stage["inferer"].sampler.num_inference_steps, samples=stage["inferer"].num_samples)
        rows[-1]["peak_memory_GiB_so_far"] = round(peak_memory_gib(device), 2)
        print(json.dumps(rows[-1]))

    cascade.on_stage_end = record
    n = cascade.stages[-1]["xray_size"]
    with torch.no_grad():
        cascade(torch.rand(1, 2, n, n, device=device), first)
    total = sum(r["seconds"] for r in rows)
    print(
        json.dumps(
            {"chain": run, "total_seconds": round(total, 1), "peak_memory_GiB": round(peak_memory_gib(device), 2)}
        )
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="print the top operators of one training step")
    p.add_argument("--widths", choices=["shipped", "seed"], default="shipped")
    p.add_argument("--whole", action="store_true", help="stages 2-3 train on the whole volume instead of crops")
    p.add_argument("--sw_batch_size", type=int, default=1, help="tiles per network call at inference (stages 2-3)")
    p.add_argument("--chain", help="time the bundle's chained inference instead: 1, 1-2 or 1-3")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = device.type == "cuda"
    print(json.dumps({"device": torch.cuda.get_device_name() if amp else "cpu", "torch": torch.__version__}))
    if args.chain:
        chain(args.chain, device)
        return
    for stage in args.stages:
        cfg = stage_config(stage, args.widths, args.whole)
        full, prev, w_phys = cfg["volume_size"], cfg["use_prev"], cfg["loss_weights"]["physics"]
        d = cfg["crop_size"] if stage > 1 else full  # what one training sample holds
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
        if stage > 1:
            from custom.xray2ct.patch_network import cube_coordinates

            extra["coords"] = cube_coordinates(full, (0, 0, 0), d, device=device)[None].expand(b, -1, -1, -1, -1)
        opt = trainer.optimizer
        scaler = torch.amp.GradScaler(enabled=amp)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = trainer.compute_losses(net, xray, ct, extra)["total"]
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        if amp:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        row = {"stage": stage, "volume": full, "train_crop": d, "batch": b, "widths": args.widths}
        row["params_M"] = sum(x.numel() for x in net.parameters()) / 1e6
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
        if stage > 1:
            extra = {k: v[:1] for k, v in extra.items()}
        cond = {"xrays": xray[:1], **extra}
        t01 = torch.full((1,), 0.5, device=device)
        with torch.no_grad(), torch.autocast(device.type, enabled=amp):
            call = timed(lambda: net(ct[:1], t01, **cond), device, args.repeats)
            for n in args.steps:
                if stage == 1:
                    sampler = DDIMSampler(cosine_alpha_bar(1000), n)
                    s = timed(lambda: sampler.sample(net, (1, 1, d, d, d), cond, device=device), device, 1)
                    row[f"sampler_overhead_{n}_pct"] = 100 * max(0.0, s - n * call) / s
                else:  # the whole volume, tile by tile, as inference.json runs it
                    inferer = DDIMInferer(full, num_inference_steps=n, roi_size=d, sw_batch_size=args.sw_batch_size)
                    whole_prev = torch.rand(1, 1, full, full, full, device=device) * 2 - 1
                    s = timed(lambda: inferer(xray[:1], net, prev=whole_prev), device, 1)
                row[f"infer_{n}_steps_s"] = s
            if amp:
                row["infer_peak_mem_GiB"] = torch.cuda.max_memory_allocated() / 2**30
        row["network_call_s"] = call
        print(json.dumps(row))
        if amp:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
