"""Sweep wall time on Ray: the same 2 x 2 demo grid with units side by side vs one after the other, same machine,
same run (a ratio, never a timed test). Also checks that the per-pair tables are bit-identical.

    .venv/bin/python bench/bench_sweep.py                  # demo model, NF4, small subsets, 1 epoch
    .venv/bin/python bench/bench_sweep.py --parallel 2 --trained-subset 96 --epochs 2
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tli_core.config import TLIConfig  # noqa: E402
from tli_core.grid import run_sweep  # noqa: E402
from tli_core.models import ModelSpec  # noqa: E402
from tli_core.pairs import DEFAULT_CONTROL, DEFAULT_TRAINED  # noqa: E402
from tli_core.sweeps import SweepSpec, create_sweep  # noqa: E402
from tli_core.util import cpu_count, quiet_libraries  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def tables(sweep) -> pd.DataFrame:
    frames = [pd.read_csv(sweep.runs_dir / u["run"] / "eval" / "studio" / "pairs_layers.csv").assign(cell=u["cell"])
              for u in sweep.cells()]
    return pd.concat(frames, ignore_index=True)


def main() -> None:
    quiet_libraries()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parallel", type=int, default=None, help="units at a time in the parallel run (default: cores)")
    ap.add_argument("--trained-subset", type=int, default=48)
    ap.add_argument("--control-subset", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()
    base = TLIConfig(model=ModelSpec(model="demo", device="cpu"), trained_pairs=str(DEFAULT_TRAINED),
                     control_pairs=str(DEFAULT_CONTROL), trained_subset=args.trained_subset,
                     control_subset=args.control_subset, epochs=args.epochs, warmup_steps=1, protocols=["studio"])
    parallel = args.parallel or cpu_count()
    seconds, results = {}, {}
    with tempfile.TemporaryDirectory(prefix="tli-bench-sweep-") as tmp:
        for label, p in (("parallel", parallel), ("sequential", 1)):
            sweep = create_sweep(SweepSpec(base=base, target_layers=[[1], [2]], ranks=[4, 16]), Path(tmp) / label)
            start = time.perf_counter()
            status = run_sweep(sweep, parallel=p)
            seconds[label] = time.perf_counter() - start
            assert status["state"] == "done", status
            results[label] = tables(sweep)
            print(f"{label}: {seconds[label]:.1f} s ({sweep.status()['plan']['slots']} unit(s) at a time, "
                  f"{sweep.status()['plan']['threads']} thread(s) each)", flush=True)
    same = results["parallel"].equals(results["sequential"])
    print(f"\nmachine: {cpu_name()}, {cpu_count()} cores; 2 x 2 demo grid (NF4, {args.trained_subset} trained / "
          f"{args.control_subset} control pairs, {args.epochs} epoch(s)), Ray local runtime started per sweep")
    print(f"sequential / parallel = {seconds['sequential'] / seconds['parallel']:.2f}x; per-pair tables "
          f"bit-identical: {same}")


if __name__ == "__main__":
    main()
