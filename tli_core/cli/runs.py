"""``runs`` (list, diff, stop, delete) and ``compare`` (paired statistics for any before/after table)."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from ..errors import TLIError
from ..files import csv_bytes, read_csv, unescape_cell, write_output
from ..report import build_bundle, build_report, static_images_available
from ..runs import delete_run, diff_configs, load_run, runs_table
from ..stats import compare_table, format_stats


def cmd_runs(args) -> int:
    if args.delete is not None:
        run = load_run(args.delete, args.runs_dir)
        delete_run(run)
        print(f"deleted run {run.id}")
        return 0
    if args.diff:
        if len(args.diff) < 2:
            raise TLIError("--diff needs two or more runs")
        print(diff_configs(*(load_run(x, args.runs_dir) for x in args.diff)).to_string(index=False))
        return 0
    if args.stop is not None:
        run = load_run(args.stop, args.runs_dir)
        run.request_stop()
        print(f"asked run {run.id} to stop: it ends within seconds, keeping what it finished")
        return 0
    table = runs_table(args.runs_dir)
    if table.empty:
        print("no runs yet")
        return 0
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        cols = ["run", "name", "state", "step", "target layers", "method", "rank", "protocol", "control specific Δ",
                "control specific p (Holm)", "control hit@1 CSLS Δ", "control raw Δ", "control shuffled Δ"]
        shown = table[cols].astype(object).where(table[cols].notna(), "—")  # unknown reads "—", never None/NaN
        print(shown.to_string(index=False, formatters={c: _cell for c in cols}))
    return 0


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def cmd_report(args) -> int:
    run = load_run(args.run, args.runs_dir)
    problems = run.problems()
    if problems:
        raise TLIError(f"run {run.id} is unreadable: " + "; ".join(problems))
    if run.summary() is None:
        raise TLIError(f"run {run.id} has no results to report yet; evaluate it first")
    if args.zip:
        write_output(args.zip, build_bundle(run))
        print(f"wrote {args.zip} (report, tables, figures as SVG/PNG"
              + ("" if static_images_available() else ": none, no Chrome/Chromium found") + ", adapter)")
    out = args.out or (None if args.zip else f"{run.id}-report.html")
    if out:
        write_output(out, build_report(run))
        print(f"wrote {out} (self-contained; open it in any browser, offline)")
    return 0


def read_table(path: str) -> pd.DataFrame:
    p = Path(path)
    if not p.is_file():
        raise TLIError(f"table not found: {p}")
    sep = "\t" if p.suffix.lower() in (".tsv", ".txt") else ","
    try:
        with open(p, encoding="utf-8", newline="") as fh:
            header = [unescape_cell(h.strip()) for h in next(csv.reader(fh, delimiter=sep), [])]
        repeated = sorted({h for h in header if h and header.count(h) > 1})
        if repeated:  # pandas would rename the second to 'before.1' and --before would take the first silently
            raise TLIError(f"{p}: the header names column(s) {', '.join(map(repr, repeated))} more than once; "
                           f"keep one of each")
        return read_csv(p, sep=sep, encoding="utf-8", keep_default_na=True, na_values=None)
    except csv.Error as exc:
        raise TLIError(f"cannot read {p} as a table: {exc}") from None
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
        write_output(args.out, csv_bytes(table))
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

    p = sub.add_parser("report", help="export a run as one self-contained HTML report (and a ZIP bundle)",
                       description="Write the run's report: interactive figures, statistics under every evaluation "
                                   "protocol, the word-by-word table, settings, model and environment facts and the "
                                   "word sets' hashes, in one HTML file that opens offline. --zip adds the CSV "
                                   "tables, figures as SVG and PNG and the adapter.")
    p.add_argument("--run", required=True, help="run id (as `runs` lists it)")
    p.add_argument("--runs-dir", default=None)
    p.add_argument("--out", default=None, help="HTML file to write (default: <run>-report.html, unless --zip)")
    p.add_argument("--zip", default=None, help="also write the bundle to this ZIP file")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("runs", help="list, diff, stop or delete runs")
    p.add_argument("--runs-dir", default=None)
    p.add_argument("--diff", nargs="+", metavar="RUN", help="settings that differ between two or more runs")
    p.add_argument("--delete", metavar="RUN", help="delete a finished run")
    p.add_argument("--stop", metavar="RUN", help="ask a running run to stop (within seconds; what it finished is kept)")
    p.set_defaults(func=cmd_runs)
