"""``sweep``: a grid over target layer(s) x method (LoRA ranks, full FT) x placement x seeds (+ a placebo arm), one
ordinary run per unit, run on Ray (a local runtime, or a cluster by address)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..grid import run_sweep
from ..jobs.runner import start_sweep
from ..runs import default_runs_dir
from ..stats import CORRECTIONS
from ..sweeps import Sweep, SweepSpec, load_sweep, parse_grid_layers
from ..util import parse_seeds
from .grid import add_ray_flags, add_replicate_flags, finish_sweep, parse_tasks
from .train import add_training_flags, config_from_args


def spec_from_args(args) -> SweepSpec:
    config = config_from_args(args)
    ranks = [int(r) for r in str(args.ranks).split(",") if r.strip()]
    sep = ";" if ";" in args.placements else ","  # block lists with commas are separated by ';'
    placements = [p.strip() for p in args.placements.split(sep) if p.strip()]
    methods = [m.strip() for m in str(args.methods).split(",") if m.strip()]
    return SweepSpec(base=config, target_layers=parse_grid_layers(args.layers), ranks=ranks, placements=placements,
                     correction=args.correction, methods=methods, seeds=parse_seeds(args.seeds),
                     placebo=bool(args.placebo), tasks=parse_tasks(args.tasks), fewshot=int(args.fewshot),
                     limit=args.limit, threads_per_cell=args.threads_per_cell, gpus_per_cell=args.gpus_per_cell)


def cmd_sweep(args) -> int:
    runs_dir = Path(args.runs_dir or default_runs_dir())
    if args.resume:
        sweep = load_sweep(args.resume, runs_dir)
    else:
        sweep = start_sweep(spec_from_args(args), runs_dir, launch=False)
    units = sweep.cells()
    print(f"sweep {sweep.id}: {len(sweep.spec().cells())} cells, {len(units)} units in {sweep.path}", file=sys.stderr)
    return finish_sweep(sweep, args)


def cmd_sweep_worker(args) -> int:
    status = run_sweep(Sweep(args.sweep_dir), parallel=args.parallel, address=args.ray_address, fresh=False)
    return 0 if status.get("state") == "done" else 1


def add_commands(sub) -> None:
    p = sub.add_parser("sweep", help="grid over target layer(s) x method (LoRA ranks, full FT) x placement x seeds, "
                                     "with a placebo arm; one run per unit, on Ray",
                       description="Train one ordinary run per unit of the grid (cell x seed x arm) on Ray -- "
                                   "several at a time on this machine, or on a cluster (--ray-address) -- then print "
                                   "each cell's specific effect on the control set over its seeds, with p-values "
                                   "corrected across cells, the placebo contrast and the verdict. Any train flag "
                                   "sets the other settings of every cell. --resume finishes a sweep's missing units.")
    p.add_argument("--layers", default="2", help="target-layer settings, e.g. 1,2 or 1,2,1+2 ('+' = trained together)")
    p.add_argument("--ranks", default="16", help="LoRA ranks, e.g. 4,16")
    p.add_argument("--methods", default="lora", help="lora, full (fine-tuning of the blocks themselves) or lora,full: "
                                                     "full FT is one more column beside the LoRA ranks")
    p.add_argument("--placements", default="all", help="adapter placements, e.g. all,up_to_target,early,late; "
                                                       "block lists such as '1-2;1-4,8' are separated by ';'")
    p.add_argument("--correction", choices=list(CORRECTIONS), default="bh",
                   help="multiple-comparison correction across cells (default: Benjamini-Hochberg)")
    add_replicate_flags(p)
    p.add_argument("--tasks", default=None, help="lm-eval benchmarks run in every unit, base vs tuned (e.g. "
                                                 "tli_word_choice_sw_en,xnli_sw): does the tuning keep zero-shot skill")
    p.add_argument("--fewshot", type=int, default=0, help="few-shot examples of the benchmarks (default 0)")
    p.add_argument("--limit", type=int, default=None, help="items per benchmark task (default: all)")
    p.add_argument("--threads-per-cell", type=int, default=None,
                   help="CPU threads of one unit (default: the cores shared by as many units as can run; fixed when "
                        "the sweep is created)")
    p.add_argument("--gpus-per-cell", type=float, default=None,
                   help="GPUs of one unit: 1 (default where there are GPUs), a fraction, or several for a model "
                        "sharded with accelerate")
    add_ray_flags(p)
    p.add_argument("--resume", default=None, metavar="SWEEP", help="finish this sweep's missing units (id)")
    p.add_argument("--out", default=None, help="write the results table to this CSV")
    add_training_flags(p, skip=("target_layers", "lora_r", "method"))
    p.set_defaults(func=cmd_sweep, target_layers=None, rank=None, method=None)

    p = sub.add_parser("sweep-worker", help=argparse.SUPPRESS)
    p.add_argument("sweep_dir")
    p.add_argument("--parallel", type=int, default=None)
    p.add_argument("--ray-address", default=None)
    p.set_defaults(func=cmd_sweep_worker)
