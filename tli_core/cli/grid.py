"""What the commands that run grids share (``sweep``, and ``train --seeds/--placebo``): the Ray and replicate flags,
running a sweep in the foreground with progress, and printing its results with the verdict in words."""

from __future__ import annotations

import sys
import time

import pandas as pd

from ..files import csv_bytes, write_output
from ..grid import run_sweep, sweep_eta
from ..sweeps import Sweep, best_cell, leading_cell, no_star_reason, sweep_results, variant_label

RESULT_COLUMNS = ["cell", "target layers", "method", "rank", "placement", "state", "seeds", "placebo",
                  "control specific Δ", "control specific CI low", "control specific CI high",
                  "control specific p corrected", "control hit@1 CSLS Δ", "control TLI − placebo",
                  "control TLI − placebo p corrected", "control raw Δ", "control shuffled Δ", "trained specific Δ",
                  "trained specific p corrected", "★"]


def print_sweep(results: pd.DataFrame) -> None:
    """The cells, the specific effect first (raw and shuffled changes labelled as such), then the verdict in words."""
    with pd.option_context("display.width", 250, "display.max_columns", 40):
        cols = [c for c in RESULT_COLUMNS if c in results]
        print(results[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    correction = results.attrs.get("correction", "bh")
    print(f"\nspecific Δ: change of cos(sw, en) minus the change of the same Swahili word's similarity to "
          f"non-translations, mean over seeds; p corrected across cells ({correction}); raw Δ is the paper's change")
    best = best_cell(results)
    if best is not None:
        row = results[results["cell"] == best].iloc[0]
        print(f"★ best cell {best}: layers {row['target layers']}, {variant_label(row['method'], row['rank'])}, "
              f"{row['placement']} — {row['verdict']}")
    else:
        print(no_star_reason(results))
        lead = leading_cell(results)
        if lead is not None:
            row = results[results["cell"] == lead].iloc[0]
            print(f"largest specific effect: cell {lead} (layers {row['target layers']}, "
                  f"{variant_label(row['method'], row['rank'])}, {row['placement']}) — {row['verdict']}")
    for _, row in results[results["state"] == "invalid"].iterrows():
        print(f"cell {row['cell']} not run: {row['reason']}")


def sweep_progress(quiet: bool):
    """One line per change: units done/running/queued, each running unit's phase and step, the time left."""
    last = {"line": None, "at": 0.0}

    def report(units, sweep: Sweep) -> None:
        if quiet:
            return
        counts = {s: sum(u.get("state") == s for u in units) for s in ("done", "running", "queued", "failed")}
        eta = sweep_eta(sweep)
        running = "; ".join(eta.running_lines[:4])
        line = (f"[sweep] {counts['done']}/{len(units)} units done, {counts['running']} running"
                + (f", {counts['failed']} failed" if counts["failed"] else "")
                + (f" · about {eta.seconds_left:.0f} s left" if eta.seconds_left is not None else "")
                + (f" · {running}" if running else ""))
        if line != last["line"] or time.monotonic() - last["at"] > 30:
            print(line, file=sys.stderr)
            last.update(line=line, at=time.monotonic())

    return report


def parse_tasks(text: str | None) -> list[str]:
    return [t.strip() for t in str(text or "").split(",") if t.strip()]


def finish_sweep(sweep: Sweep, args) -> int:
    """Run ``sweep`` in the foreground with the command's Ray flags, then print its results."""
    status = run_sweep(sweep, progress=sweep_progress(args.quiet), parallel=args.parallel, address=args.ray_address,
                       retries=args.retries, dashboard=args.ray_dashboard)
    results = sweep_results(sweep, getattr(args, "correction", None))
    print(f"sweep {sweep.id}: {status.get('state')}" + (f" — {status['message']}" if status.get("message") else ""))
    print_sweep(results)
    if getattr(args, "out", None):
        write_output(args.out, csv_bytes(results))
    return 0 if status.get("state") == "done" else 1


def add_replicate_flags(p) -> None:
    """--seeds and --placebo: the replicates and the control a claimed improvement is judged against."""
    p.add_argument("--seeds", default=None,
                   help="seeds, e.g. 1,2,3: each setting is trained once per seed and judged against seed-to-seed "
                        "variation (seeds as replicates); default: the config's one seed")
    p.add_argument("--placebo", action="store_true",
                   help="train a companion per seed with the same settings on deranged pairs (each Swahili word "
                        "paired with an English word that is none of its translations); results then show TLI "
                        "minus placebo (difference-in-differences of the specific effect)")


def add_ray_flags(p) -> None:
    p.add_argument("--parallel", type=int, default=None,
                   help="units at a time at most (default: as many as the cores/GPUs and memory allow; 1 = one after "
                        "the other)")
    p.add_argument("--ray-address", default=None,
                   help="an existing Ray cluster: auto, HOST:6379 or ray://HOST:10001 (default: $RAY_ADDRESS, else "
                        "a local Ray runtime started for the sweep)")
    p.add_argument("--retries", type=int, default=1, help="times a unit whose process died is run again (default 1)")
    p.add_argument("--ray-dashboard", action="store_true", help="start Ray's dashboard with a local runtime")
