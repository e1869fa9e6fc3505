"""CLI commands for training, evaluation, comparison and run management (scan lives in cli.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import TLIError

# TLIConfig field -> (flag, type); the help text comes from the dataclass itself.
TRAIN_FLAGS = {
    "trained_pairs": ("--pairs", str), "control_pairs": ("--control", str),
    "trained_subset": ("--trained-subset", int), "control_subset": ("--control-subset", int),
    "target_layers": ("--target-layers", str), "eval_layer": ("--eval-layer", int),
    "pooling": ("--pooling", str), "lora_r": ("--rank", int), "lora_alpha": ("--alpha", int),
    "lora_dropout": ("--lora-dropout", float), "target_modules": ("--target-modules", str),
    "adapter_blocks": ("--adapter-blocks", str), "loss": ("--loss", str), "margin": ("--margin", float),
    "temperature": ("--temperature", float), "learning_rate": ("--lr", float),
    "warmup_steps": ("--warmup-steps", int), "epochs": ("--epochs", int), "batch_size": ("--batch-size", int),
    "weight_decay": ("--weight-decay", float), "grad_clip": ("--grad-clip", str), "seed": ("--seed", int),
}
MODEL_FLAGS = {"model": "model", "quant": "quantization", "device": "device", "compute_dtype": "compute_dtype",
               "revision": "revision", "trust_remote_code": "trust_remote_code", "max_memory": "max_memory"}


def read_config_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise TLIError(f"config file not found: {p}")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml and json raise different types; both mean a bad file
        raise TLIError(f"cannot read config file {p}: {exc}") from None
    if not isinstance(data, dict):
        raise TLIError(f"config file {p} must hold a mapping of settings")
    return data


def config_from_args(args):
    """TLIConfig from an optional config file, overridden by any flag given on the command line."""
    from .models import ModelSpec
    from .training import TLIConfig

    base = read_config_file(args.config) if args.config else {}
    config = TLIConfig.from_dict(base)
    values = config.to_dict()
    model = values["model"]
    for arg, key in MODEL_FLAGS.items():
        if getattr(args, arg, None) is not None:
            model[key] = getattr(args, arg)
    values["model"] = ModelSpec.from_dict(model)
    for key, (flag, _) in TRAIN_FLAGS.items():
        v = getattr(args, flag.lstrip("-").replace("-", "_"))
        if v is None:
            continue
        if key == "target_layers":
            from .cli import parse_layers

            v = parse_layers(v)
        elif key == "target_modules":
            v = [m.strip() for m in v.split(",") if m.strip()]
        elif key == "grad_clip":
            v = None if v.lower() in ("none", "off", "0") else float(v)
        values[key] = v
    if args.early_exit is not None:
        values["early_exit"] = args.early_exit
    if args.allow_overlap:
        values["allow_overlap"] = True
    return TLIConfig.from_dict(values)


class PhaseBars:
    """One terminal progress bar per phase of a run."""

    def __init__(self, enabled: bool):
        from .cli import TerminalProgress

        self.enabled, self.phase, self.bar, self._cls = enabled, None, None, TerminalProgress

    def __call__(self, phase: str, done: int, total: int, extra: str = "") -> None:
        if phase != self.phase:
            self.close()
            self.phase, self.bar = phase, self._cls(phase, self.enabled)
        self.bar(done, total, extra)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def print_summary(run) -> None:
    from .stats import format_stats

    summary = run.summary()
    if not summary:
        return
    import pandas as pd

    table = pd.DataFrame(list(summary["groups"].values()))
    print(f"\nbefore/after at layer {summary['eval_layer']} ({summary['eval_layer_name']}), "
          f"pooling={summary['pooling']}:")
    cols = ["group", "n", "mean_before", "std_before", "mean_after", "std_after", "change", "pct_change", "t", "p",
            "wilcoxon_p", "cohens_dz", "ci_low", "ci_high"]
    print(format_stats(table[cols]))
    print("\nshuffled baseline and retrieval at that layer (before -> after):")
    for g in summary["groups"].values():
        print(f"  {g['group']}: shuffled {g['shuffled_mean_before']:.4f} -> {g['shuffled_mean_after']:.4f}, "
              f"gap {g['gap_before']:+.4f} -> {g['gap_after']:+.4f}, P@1 NN {g['p1_nn_before']:.3f} -> "
              f"{g['p1_nn_after']:.3f}, P@1 CSLS {g['p1_csls_before']:.3f} -> {g['p1_csls_after']:.3f} "
              f"(chance {g['chance_p1_before']:.3f})")


# --------------------------------------------------------------------------- commands

def cmd_train(args) -> int:
    from .cli import quiet_libraries
    from .runs import busy_message, create_run, default_runs_dir
    from .worker import check_config, execute

    quiet_libraries()
    config = config_from_args(args)
    runs_dir = Path(args.runs_dir or default_runs_dir())
    for w in check_config(config):  # every check before any compute or any file written
        print(f"warning: {w}", file=sys.stderr)
    busy = busy_message(runs_dir)
    if busy:
        raise TLIError(busy)
    run = create_run(config, runs_dir, name=args.name)
    print(f"run directory: {run.path}", file=sys.stderr)
    bars = PhaseBars(not args.quiet)
    try:
        status = execute(run, progress=bars)
    finally:
        bars.close()
    print(f"run {run.id}: {status.get('state')}" + (f" — {status['message']}" if status.get("message") else ""))
    print_summary(run)
    if status.get("state") == "failed":
        print(f"see {run.log_path}", file=sys.stderr)
        return 1
    return 0


def cmd_evaluate(args) -> int:
    from .runs import load_run
    from .worker import evaluate_run

    run = load_run(args.run, args.runs_dir)
    bars = PhaseBars(not args.quiet)
    try:
        evaluate_run(run, adapter=args.adapter, progress=bars)
    finally:
        bars.close()
    print(f"run {run.id}: evaluated; tables in {run.eval_dir}")
    print_summary(run)
    return 0


def read_table(path: str):
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise TLIError(f"table not found: {p}")
    sep = "\t" if p.suffix.lower() in (".tsv", ".txt") else ","
    try:
        return pd.read_csv(p, sep=sep, encoding="utf-8")
    except UnicodeDecodeError:
        raise TLIError(f"{p} is not UTF-8 text; save it as UTF-8") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise TLIError(f"cannot read {p} as a table: {str(exc).splitlines()[0]}") from None


def cmd_compare(args) -> int:
    from .files import write_csv
    from .stats import compare_table, format_stats

    df = read_table(args.csv)
    table, used = compare_table(df, args.before, args.after, args.group, drop_nan=args.drop_nan, seed=args.seed)
    print(f"{args.csv}: {len(df)} rows; before = column {used.before!r}, after = column {used.after!r}"
          + (f", grouped by {used.group!r}" if used.group else ", one group"))
    if used.dropped:
        print(f"dropped {used.dropped} row(s) with no number in {used.before!r} or {used.after!r}")
    print(format_stats(table))
    if args.out:
        write_csv(args.out, table)
        print(f"wrote {args.out}")
    return 0


def cmd_runs(args) -> int:
    import pandas as pd

    from .runs import delete_run, diff_configs, load_run, runs_table

    if args.delete:
        run = load_run(args.delete, args.runs_dir)
        delete_run(run)
        print(f"deleted run {run.id}")
        return 0
    if args.diff:
        a, b = (load_run(x, args.runs_dir) for x in args.diff)
        print(diff_configs(a, b).to_string(index=False))
        return 0
    if args.stop:
        run = load_run(args.stop, args.runs_dir)
        run.request_stop()
        print(f"asked run {run.id} to stop after its current step")
        return 0
    table = runs_table(args.runs_dir)
    if table.empty:
        print("no runs yet")
        return 0
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        cols = ["run", "state", "step", "target layers", "rank", "epochs", "trained % change", "control % change",
                "control p"]
        print(table[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    return 0


def cmd_worker(args) -> int:
    from .worker import worker_main

    return worker_main(args.run_dir)


def cmd_evaluate_worker(args) -> int:
    """Evaluate in a background process (the dashboard's Evaluate button)."""
    from .runs import Run
    from .worker import evaluate_run

    run = Run(args.run_dir)
    try:
        evaluate_run(run)
    except TLIError as exc:
        run.log(f"evaluation failed: {exc}")
        return 2
    return 0


def print_sweep(results) -> None:
    import pandas as pd

    from .sweeps import best_cell

    cols = ["cell", "target layers", "rank", "placement", "state", "control change", "control % change",
            "control p", "control p corrected", "control P@1 change", "trained change", "trained p corrected"]
    with pd.option_context("display.width", 220, "display.max_columns", 30):
        print(results[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    best = best_cell(results)
    if best is not None:
        row = results[results["cell"] == best].iloc[0]
        print(f"\nbest cell {best}: layers {row['target layers']}, rank {row['rank']}, {row['placement']} — control "
              f"change {row['control change']:+.4f} ({row['control % change']:+.2f} %), corrected p "
              f"{row['control p corrected']:.3g} ({results.attrs['correction']})")
    for _, row in results[results["state"] == "invalid"].iterrows():
        print(f"cell {row['cell']} not run: {row['reason']}")


def cmd_sweep(args) -> int:
    from .cli import quiet_libraries
    from .files import write_csv
    from .runs import busy_message, default_runs_dir
    from .sweeps import Sweep, SweepSpec, create_sweep, parse_grid_layers, run_sweep, sweep_results

    quiet_libraries()
    runs_dir = Path(args.runs_dir or default_runs_dir())
    if args.resume:
        path = Path(args.resume)
        sweep = Sweep(path if (path / "sweep.json").is_file() else runs_dir / "sweeps" / args.resume)
    else:
        config = config_from_args(args)
        ranks = [int(r) for r in str(args.ranks).split(",") if r.strip()]
        sep = ";" if ";" in args.placements else ","  # block lists with commas are separated by ';'
        placements = [p.strip() for p in args.placements.split(sep) if p.strip()]
        spec = SweepSpec(base=config, target_layers=parse_grid_layers(args.layers), ranks=ranks,
                         placements=placements, correction=args.correction)
        busy = busy_message(runs_dir)
        if busy:
            raise TLIError(busy)
        sweep = create_sweep(spec, runs_dir)
    print(f"sweep {sweep.id}: {len(sweep.cells())} cells in {sweep.path}", file=sys.stderr)

    def report(cell, cells):
        if not args.quiet:
            print(f"[cell {cell['cell'] + 1}/{len(cells)}] layers {cell['target_layers']}, rank {cell['rank']}, "
                  f"{cell['placement']}", file=sys.stderr)

    status = run_sweep(sweep, progress=report)
    results = sweep_results(sweep, args.correction)
    print(f"sweep {sweep.id}: {status.get('state')}" + (f" — {status['message']}" if status.get("message") else ""))
    print_sweep(results)
    if args.out:
        write_csv(args.out, results)
    return 0 if status.get("state") == "done" else 1


def cmd_sweep_worker(args) -> int:
    from .sweeps import Sweep, run_sweep

    status = run_sweep(Sweep(args.sweep_dir))
    return 0 if status.get("state") == "done" else 1


# --------------------------------------------------------------------------- parser

def add_training_flags(p, add_model_args, skip=()) -> None:
    """Every TLIConfig setting as a flag (help text from the dataclass), plus --config and the model."""
    from .training import TLIConfig

    helps = TLIConfig.help()
    p.add_argument("--config", default=None, help="JSON/YAML file of TLIConfig settings (e.g. a run's config.json)")
    for key, (flag, typ) in TRAIN_FLAGS.items():
        if key not in skip:
            p.add_argument(flag, type=typ, default=None, help=helps[key] + (
                " (comma-separated)" if key in ("target_layers", "target_modules") else ""))
    p.add_argument("--early-exit", action=argparse.BooleanOptionalAction, default=None,
                   help=helps["early_exit"] + " (default: on)")
    p.add_argument("--allow-overlap", action="store_true", help=helps["allow_overlap"])
    p.add_argument("--runs-dir", default=None, help="where run directories go (default: ./runs or $TLI_RUNS_DIR)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_args(p, defaults=False)


def add_commands(sub, add_model_args) -> None:
    p = sub.add_parser("train", help="train TLI adapters and evaluate before/after (writes a run directory)",
                       description="Train LoRA adapters with the TLI loss on a target layer, then evaluate "
                                   "trained and control pairs before and after. Defaults are the paper's. "
                                   "Settings come from --config (JSON or YAML, the run's config.json format) "
                                   "and any flag given overrides the file.")
    add_training_flags(p, add_model_args)
    p.add_argument("--name", default=None, help="run directory name (default: time, model, layer and rank)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", help="grid over target layer(s) x LoRA rank x adapter placement, one run per cell",
                       description="Train one ordinary run per cell of the grid, one at a time, then print each "
                                   "cell's control-set change with p-values corrected across the grid. Any train "
                                   "flag sets the other settings of every cell. --resume continues a sweep.")
    p.add_argument("--layers", default="2", help="target-layer settings, e.g. 1,2 or 1,2,1+2 ('+' = trained together)")
    p.add_argument("--ranks", default="16", help="LoRA ranks, e.g. 4,16")
    p.add_argument("--placements", default="all", help="adapter placements, e.g. all,up_to_target,early,late; "
                                                       "block lists such as '1-2;1-4,8' are separated by ';'")
    p.add_argument("--correction", choices=["bh", "holm", "none"], default="bh",
                   help="multiple-comparison correction across cells (default: Benjamini-Hochberg)")
    p.add_argument("--resume", default=None, metavar="SWEEP", help="continue this sweep (id or directory)")
    p.add_argument("--out", default=None, help="write the results table to this CSV")
    add_training_flags(p, add_model_args, skip=("target_layers", "lora_r"))
    p.set_defaults(func=cmd_sweep, target_layers=None, rank=None)

    p = sub.add_parser("sweep-worker", help=argparse.SUPPRESS)
    p.add_argument("sweep_dir")
    p.set_defaults(func=cmd_sweep_worker)

    p = sub.add_parser("evaluate", help="re-evaluate a run from its saved adapter",
                       description="Load the base model fresh, attach the run's saved adapter, and recompute the "
                                   "before/after tables and statistics.")
    p.add_argument("--run", required=True, help="run directory (or its id under --runs-dir)")
    p.add_argument("--adapter", default=None, help="adapter inside the run, e.g. checkpoints/epoch_3 "
                                                   "(default: adapter/)")
    p.add_argument("--runs-dir", default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="paired statistics for any per-pair before/after table",
                       description="Read a CSV/TSV with one row per pair and print, per group, mean/std "
                                   "before and after, change, paired t-test, Wilcoxon, Cohen's d_z and a "
                                   "bootstrap 95%% CI.")
    p.add_argument("--csv", required=True, help="the table (CSV, or TSV by extension)")
    p.add_argument("--before", required=True, help="column with the similarity before")
    p.add_argument("--after", required=True, help="column with the similarity after")
    p.add_argument("--group", default=None, help="column that splits rows into groups (e.g. set)")
    p.add_argument("--drop-nan", action="store_true", help="drop rows with an empty before/after instead of "
                                                           "refusing (says how many)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--out", default=None, help="write the statistics table to this CSV")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("runs", help="list, diff, stop or delete runs")
    p.add_argument("--runs-dir", default=None)
    p.add_argument("--diff", nargs=2, metavar=("RUN_A", "RUN_B"), help="settings that differ between two runs")
    p.add_argument("--delete", metavar="RUN", help="delete a finished run")
    p.add_argument("--stop", metavar="RUN", help="ask a running run to stop after its current step")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("worker", help=argparse.SUPPRESS)
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("evaluate-worker", help=argparse.SUPPRESS)
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_evaluate_worker)
