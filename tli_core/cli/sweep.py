"""``sweep``: a grid over target layer(s) x method (LoRA ranks, full FT) x placement, one ordinary run per cell."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from ..files import write_csv
from ..jobs.runner import start_sweep
from ..runs import default_runs_dir
from ..stats import CORRECTIONS
from ..sweeps import (
    Sweep,
    SweepSpec,
    best_cell,
    load_sweep,
    parse_grid_layers,
    run_sweep,
    significant_gain,
    sweep_results,
    variant_label,
)
from .train import add_training_flags, config_from_args


def print_sweep(results: pd.DataFrame) -> None:
    cols = ["cell", "target layers", "method", "rank", "placement", "state", "control change", "control % change",
            "control p", "control p corrected", "control P@1 change", "trained change", "trained p corrected"]
    with pd.option_context("display.width", 220, "display.max_columns", 30):
        print(results[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    best = best_cell(results)
    if best is not None:
        row = results[results["cell"] == best].iloc[0]
        lead = "best cell" if significant_gain(results, best) else "no cell raised the control set significantly; " \
            "largest change: cell"
        print(f"\n{lead} {best}: layers {row['target layers']}, {variant_label(row['method'], row['rank'])}, "
              f"{row['placement']} — control "
              f"change {row['control change']:+.4f} ({row['control % change']:+.2f} %), corrected p "
              f"{row['control p corrected']:.3g} ({results.attrs['correction']})")
    for _, row in results[results["state"] == "invalid"].iterrows():
        print(f"cell {row['cell']} not run: {row['reason']}")


def cmd_sweep(args) -> int:
    runs_dir = Path(args.runs_dir or default_runs_dir())
    if args.resume:
        sweep = load_sweep(args.resume, runs_dir)
    else:
        config = config_from_args(args)
        ranks = [int(r) for r in str(args.ranks).split(",") if r.strip()]
        sep = ";" if ";" in args.placements else ","  # block lists with commas are separated by ';'
        placements = [p.strip() for p in args.placements.split(sep) if p.strip()]
        methods = [m.strip() for m in str(args.methods).split(",") if m.strip()]
        spec = SweepSpec(base=config, target_layers=parse_grid_layers(args.layers), ranks=ranks,
                         placements=placements, correction=args.correction, methods=methods)
        sweep = start_sweep(spec, runs_dir, launch=False)
    print(f"sweep {sweep.id}: {len(sweep.cells())} cells in {sweep.path}", file=sys.stderr)

    def report(cell, cells):
        if not args.quiet:
            print(f"[cell {cell['cell'] + 1}/{len(cells)}] layers {cell['target_layers']}, "
                  f"{variant_label(cell.get('method'), cell['rank'])}, {cell['placement']}", file=sys.stderr)

    status = run_sweep(sweep, progress=report)
    results = sweep_results(sweep, args.correction)
    print(f"sweep {sweep.id}: {status.get('state')}" + (f" — {status['message']}" if status.get("message") else ""))
    print_sweep(results)
    if args.out:
        write_csv(args.out, results)
    return 0 if status.get("state") == "done" else 1


def cmd_sweep_worker(args) -> int:
    status = run_sweep(Sweep(args.sweep_dir))
    return 0 if status.get("state") == "done" else 1


def add_commands(sub) -> None:
    p = sub.add_parser("sweep", help="grid over target layer(s) x method (LoRA ranks, full FT) x placement, "
                                     "one run per cell",
                       description="Train one ordinary run per cell of the grid, one at a time, then print each "
                                   "cell's control-set change with p-values corrected across the grid. Any train "
                                   "flag sets the other settings of every cell. --resume continues a sweep.")
    p.add_argument("--layers", default="2", help="target-layer settings, e.g. 1,2 or 1,2,1+2 ('+' = trained together)")
    p.add_argument("--ranks", default="16", help="LoRA ranks, e.g. 4,16")
    p.add_argument("--methods", default="lora", help="lora, full (fine-tuning of the blocks themselves) or lora,full: "
                                                     "full FT is one more column beside the LoRA ranks")
    p.add_argument("--placements", default="all", help="adapter placements, e.g. all,up_to_target,early,late; "
                                                       "block lists such as '1-2;1-4,8' are separated by ';'")
    p.add_argument("--correction", choices=list(CORRECTIONS), default="bh",
                   help="multiple-comparison correction across cells (default: Benjamini-Hochberg)")
    p.add_argument("--resume", default=None, metavar="SWEEP", help="continue this sweep (id or directory)")
    p.add_argument("--out", default=None, help="write the results table to this CSV")
    add_training_flags(p, skip=("target_layers", "lora_r", "method"))
    p.set_defaults(func=cmd_sweep, target_layers=None, rank=None, method=None)

    p = sub.add_parser("sweep-worker", help=argparse.SUPPRESS)
    p.add_argument("sweep_dir")
    p.set_defaults(func=cmd_sweep_worker)
