"""Paired before/after statistics, as the paper reports them and more.

For a set of pairs measured before and after training: n, mean and std before/after, the
absolute and % change of the mean, the paired t-test (``scipy.stats.ttest_rel``, the paper's),
the Wilcoxon signed-rank test, Cohen's d_z, and a bootstrap 95% CI of the mean change.
Sweeps correct p-values across cells (Benjamini–Hochberg or Holm).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from .errors import TLIError

BOOTSTRAP_RESAMPLES = 10_000
CORRECTIONS = ("bh", "holm", "none")


@dataclass
class PairedStats:
    group: str
    n: int
    mean_before: float
    std_before: float
    mean_after: float
    std_after: float
    change: float  # mean(after) - mean(before)
    pct_change: float  # change / |mean(before)| * 100: its sign is the sign of the change
    t: float
    p: float  # paired t-test, two-sided
    wilcoxon_w: float
    wilcoxon_p: float
    cohens_dz: float  # mean(diff) / sd(diff)
    ci_low: float  # bootstrap 95% CI of the mean change
    ci_high: float

    def to_dict(self) -> dict:
        return asdict(self)


def paired_stats(before, after, group: str = "all", seed: int = 0,
                 resamples: int = BOOTSTRAP_RESAMPLES) -> PairedStats:
    """All paired statistics for one group. Needs at least 2 pairs."""
    before = np.asarray(before, dtype=np.float64)
    after = np.asarray(after, dtype=np.float64)
    if before.shape != after.shape or before.ndim != 1:
        raise TLIError("before and after must be two columns of the same length")
    if not (np.isfinite(before).all() and np.isfinite(after).all()):
        raise TLIError("before/after contain NaN or infinite values")
    n = len(before)
    if n < 2:
        raise TLIError(f"group {group!r} has {n} pair(s); paired statistics need at least 2")
    diff = after - before
    sd_diff = diff.std(ddof=1)
    if sd_diff == 0:  # every pair moved by the same amount: the tests are undefined
        t, p = (np.inf * np.sign(diff.mean()) if diff.mean() else np.nan), (0.0 if diff.mean() else 1.0)
        w, wp = np.nan, np.nan
    else:
        t, p = sps.ttest_rel(after, before)
        try:
            res = sps.wilcoxon(after, before)
            w, wp = float(res.statistic), float(res.pvalue)
        except ValueError:  # e.g. all differences zero
            w, wp = np.nan, np.nan
    rng = np.random.default_rng(seed)
    boot = diff[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    mb = before.mean()
    return PairedStats(
        group=group, n=n, mean_before=float(mb), std_before=float(before.std(ddof=1)),
        mean_after=float(after.mean()), std_after=float(after.std(ddof=1)), change=float(diff.mean()),
        pct_change=float(diff.mean() / abs(mb) * 100) if mb != 0 else float("nan"),
        t=float(t), p=float(p), wilcoxon_w=w, wilcoxon_p=wp,
        cohens_dz=float(diff.mean() / sd_diff) if sd_diff > 0 else float("nan"),
        ci_low=float(lo), ci_high=float(hi))


def stats_table(df: pd.DataFrame, before: str = "before", after: str = "after",
                group: str | None = None, seed: int = 0) -> pd.DataFrame:
    """One row of :class:`PairedStats` per group (or one row for the whole table)."""
    if group is None:
        return pd.DataFrame([paired_stats(df[before], df[after], "all", seed).to_dict()])
    rows = [paired_stats(g[before], g[after], str(name), seed).to_dict()
            for name, g in df.groupby(group, sort=False)]
    return pd.DataFrame(rows)


def correct_pvalues(p, method: str = "bh") -> np.ndarray:
    """Adjust p-values for multiple comparisons: Benjamini–Hochberg (FDR) or Holm (FWER)."""
    p = np.asarray(p, dtype=np.float64)
    if method == "none":
        return p.copy()
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if not ok.any():
        return out
    q = p[ok]
    if method == "bh":
        out[ok] = sps.false_discovery_control(q, method="bh")
    elif method == "holm":
        order = np.argsort(q)
        m = len(q)
        adj = np.maximum.accumulate((m - np.arange(m)) * q[order])
        res = np.empty(m)
        res[order] = np.minimum(adj, 1.0)
        out[ok] = res
    else:
        raise TLIError(f"unknown correction {method!r}; use one of {', '.join(CORRECTIONS)}")
    return out


# --------------------------------------------------------------------------- compare any table

@dataclass
class CompareInput:
    df: pd.DataFrame
    before: str
    after: str
    group: str | None
    dropped: int  # rows dropped for NaN before/after


def prepare_compare(df: pd.DataFrame, before: str, after: str, group: str | None = None,
                    drop_nan: bool = False) -> CompareInput:
    """Check a user's before/after table; refuse (or, if asked, drop) what cannot be compared."""
    for col in [before, after] + ([group] if group else []):
        if col not in df.columns:
            raise TLIError(f"column {col!r} not found; the table has: {', '.join(map(str, df.columns))}")
    out = df.copy()
    for col in (before, after):
        converted = pd.to_numeric(out[col], errors="coerce")
        bad = converted.isna() & out[col].notna() & (out[col].astype(str).str.strip() != "")
        if bad.any():
            first = out.loc[bad, col].iloc[0]
            raise TLIError(f"column {col!r} is not numeric: {int(bad.sum())} value(s) such as {first!r}")
        out[col] = converted
    missing = out[before].isna() | out[after].isna()
    if missing.any() and not drop_nan:
        raise TLIError(f"{int(missing.sum())} row(s) have no number in {before!r} or {after!r}; "
                       f"fix them, or drop them (--drop-nan)")
    out = out[~missing].reset_index(drop=True)
    if group and out[group].isna().any():
        raise TLIError(f"{int(out[group].isna().sum())} row(s) have no value in group column {group!r}")
    return CompareInput(df=out, before=before, after=after, group=group, dropped=int(missing.sum()))


def guess_group_column(columns) -> str | None:
    """The column an imported per-pair table groups by: one called 'set' or 'group' (any case), if any."""
    return next((c for c in columns if str(c).strip().lower() in ("set", "group")), None)


def compare_table(df: pd.DataFrame, before: str, after: str, group: str | None = None,
                  drop_nan: bool = False, seed: int = 0) -> tuple[pd.DataFrame, CompareInput]:
    """Statistics per group for any per-pair before/after table (e.g. one published with a paper)."""
    ci = prepare_compare(df, before, after, group, drop_nan)
    return stats_table(ci.df, before, after, group, seed), ci


STAT_LABELS = {
    "group": "set", "n": "n", "mean_before": "mean before", "std_before": "std before",
    "mean_after": "mean after", "std_after": "std after", "change": "change", "pct_change": "% change",
    "t": "t", "p": "p (paired t)", "wilcoxon_w": "Wilcoxon W", "wilcoxon_p": "p (Wilcoxon)",
    "cohens_dz": "Cohen's d_z", "ci_low": "95% CI low", "ci_high": "95% CI high",
    "p_holm": "p (Holm over layers)",
}


def format_stats(table: pd.DataFrame) -> str:
    """Fixed-width text of a stats table, p-values in scientific notation."""
    t = table.rename(columns=STAT_LABELS)
    fmt = {c: "{:.4f}".format for c in t.columns if t[c].dtype.kind == "f"}
    for c in ("p (paired t)", "p (Wilcoxon)"):
        if c in t:
            fmt[c] = "{:.3g}".format
    fmt["% change"] = "{:+.2f}%".format
    fmt["change"] = "{:+.4f}".format
    fmt["t"] = "{:.3f}".format
    return t.to_string(index=False, formatters=fmt)
