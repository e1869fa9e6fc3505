"""``runs`` (list, diff, stop, delete) and ``compare`` (paired statistics for any before/after table)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import TLIError
from ..files import read_csv, write_csv
from ..runs import delete_run, diff_configs, load_run, runs_table
from ..stats import compare_table, format_stats


def cmd_runs(args) -> int:
    if args.delete is not None:
        run = load_run(args.delete, args.runs_dir)
        delete_run(run)
        print(f"deleted run {run.id}")
        return 0
    if args.diff:
        a, b = (load_run(x, args.runs_dir) for x in args.diff)
        print(diff_configs(a, b).to_string(index=False))
        return 0
    if args.stop is not None:
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


def read_table(path: str) -> pd.DataFrame:
    p = Path(path)
    if not p.is_file():
        raise TLIError(f"table not found: {p}")
    sep = "\t" if p.suffix.lower() in (".tsv", ".txt") else ","
    try:
        return read_csv(p, sep=sep, encoding="utf-8", keep_default_na=True, na_values=None)
    except UnicodeDecodeError:
        raise TLIError(f"{p} is not UTF-8 text; save it as UTF-8") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise TLIError(f"cannot read {p} as a table: {str(exc).splitlines()[0]}") from None


def cmd_compare(args) -> int:
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


def add_commands(sub) -> None:
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
