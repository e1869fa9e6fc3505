"""Paired before/after statistics, as the paper reports them and as a reviewer checks them.

For a set of pairs measured before and after training: n, mean and std before/after, the
absolute and % change of the mean, the paired t-test (``scipy.stats.ttest_rel``, the paper's),
the Wilcoxon signed-rank test, Cohen's d_z, and a bootstrap 95% CI of the mean change.

Pairs are not independent: 54 Swahili headwords of the authors' list have several translations,
so their pairs share one Swahili vector. Wherever ``clusters`` (the Swahili headword of each
pair) is given, the bootstrap resamples headwords, not pairs, and the tests are run on one
value per headword (the mean of its pairs' differences): a t-test or a Wilcoxon test cannot
resample, so the unit of analysis becomes the headword instead. The paper's pair-level t-test
is kept beside them, labelled as such, so its figures stay reproducible.

Beyond one run: :func:`mcnemar` (a retrieval hit before vs after, per word), :func:`replicate_stats`
(seeds as replicates: a one-sample t over the seeds' effects) and corrections across layers or
cells (Benjamini–Hochberg or Holm).
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
    ci_low: float  # bootstrap 95% CI of the mean change (resampling headwords when clusters are given)
    ci_high: float
    n_units: int | None = None  # Swahili headwords (None: pairs taken as independent)
    p_units: float | None = None  # one-sample t-test on the per-headword mean changes
    wilcoxon_p_units: float | None = None  # Wilcoxon signed-rank test on the per-headword mean changes

    def to_dict(self) -> dict:
        return asdict(self)


def paired_stats(before, after, group: str = "all", seed: int = 0,
                 resamples: int = BOOTSTRAP_RESAMPLES, clusters=None) -> PairedStats:
    """All paired statistics for one group. Needs at least 2 pairs.

    ``clusters``: each pair's Swahili headword; the CI then resamples headwords and the ``*_units`` tests
    run on one mean change per headword (the pair-level t-test stays: it is the paper's)."""
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
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below, as a TLIError
        mb, sd_diff = before.mean(), diff.std(ddof=1)
        spreads = [mb, after.mean(), before.std(ddof=1), after.std(ddof=1), diff.mean(), sd_diff]
    if not np.isfinite(spreads).all():
        big = float(np.abs(np.concatenate([before, after])).max())
        raise TLIError(f"group {group!r}: values up to {big:.3g} are too large to average (the mean or spread "
                       f"overflows); similarities lie in [-1, 1]")
    if no_variation(diff):  # every pair moved alike (up to rounding): the tests are undefined, not t = 1e16
        sd_diff = 0.0
        t = p = w = wp = np.nan
    else:
        t, p = sps.ttest_rel(after, before)
        try:
            res = sps.wilcoxon(after, before)
            w, wp = float(res.statistic), float(res.pvalue)
        except ValueError:  # e.g. all differences zero
            w, wp = np.nan, np.nan
    units = None
    if clusters is not None:
        units = effect_stats(diff, clusters, seed=seed, resamples=resamples)
        lo, hi = units.ci_low, units.ci_high
    else:
        rng = np.random.default_rng(seed)
        boot = diff[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
        lo, hi = np.percentile(boot, [2.5, 97.5])
    return PairedStats(
        group=group, n=n, mean_before=float(mb), std_before=float(before.std(ddof=1)),
        mean_after=float(after.mean()), std_after=float(after.std(ddof=1)), change=float(diff.mean()),
        pct_change=float(diff.mean() / abs(mb) * 100) if mb != 0 else float("nan"),
        t=float(t), p=float(p), wilcoxon_w=w, wilcoxon_p=wp,
        cohens_dz=float(diff.mean() / sd_diff) if sd_diff > 0 else float("nan"),
        ci_low=float(lo), ci_high=float(hi), n_units=units.n_units if units else None,
        p_units=units.p if units else None, wilcoxon_p_units=units.wilcoxon_p if units else None)


# --------------------------------------------------------------------------- one effect, headwords as units

@dataclass
class EffectStats:
    """A per-pair effect (e.g. the change in specificity) tested with Swahili headwords as the units."""

    n: int  # pairs
    n_units: int  # headwords
    mean: float  # mean over pairs (the figure a table of pairs gives)
    ci_low: float  # 95% bootstrap CI of that mean, resampling headwords
    ci_high: float
    t: float  # one-sample t-test of the per-headword means against 0
    p: float
    wilcoxon_p: float  # Wilcoxon signed-rank test of the per-headword means
    dz: float  # mean / sd of the per-headword means

    def to_dict(self) -> dict:
        return asdict(self)


def unit_means(values, clusters) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(per-unit mean, per-unit sum, per-unit count) of ``values`` grouped by ``clusters`` (first-seen order)."""
    values = np.asarray(values, dtype=np.float64)
    codes, _ = pd.factorize(pd.Series(list(clusters), dtype=object), sort=False)
    if len(codes) != len(values):
        raise TLIError("every value needs its unit (headword): columns of different length")
    sums = np.bincount(codes, weights=values)
    counts = np.bincount(codes).astype(np.float64)
    return sums / counts, sums, counts


def cluster_bootstrap(values, clusters, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> np.ndarray:
    """Bootstrap replicates of the mean over pairs, resampling whole units (headwords) with replacement."""
    _, sums, counts = unit_means(values, clusters)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(sums), size=(resamples, len(sums)))
    return sums[idx].sum(axis=1) / counts[idx].sum(axis=1)


def no_variation(diff) -> bool:
    """True when the differences do not vary beyond rounding (``after - before`` of equal shifts is not exact)."""
    diff = np.asarray(diff, dtype=np.float64)
    return len(diff) > 1 and float(diff.std(ddof=1)) <= 1e-12 * max(1.0, float(np.abs(diff).max()))


def variation_notes(table: pd.DataFrame) -> list[str]:
    """One line per group of a :func:`stats_table` whose differences do not vary (its tests are left empty)."""
    notes = []
    if not {"group", "n", "t", "change"} <= set(table.columns):
        return notes
    for _, row in table.iterrows():
        if row["n"] >= 2 and not np.isfinite(row["t"]):
            moved = (f"every pair changed by {row['change']:+.4g}" if abs(row["change"]) > 1e-12
                     else "no pair changed")
            notes.append(f"{row['group']}: no variation: {moved}, so the paired t-test, Wilcoxon and d_z are "
                         f"undefined")
    return notes


def _one_sample(values: np.ndarray) -> tuple[float, float, float, float]:
    """(t, p, Wilcoxon p, d_z) of ``values`` against 0; no variation gives t = ±inf / nan and p 0 / 1."""
    values = np.asarray(values, dtype=np.float64)
    mean, sd = values.mean(), values.std(ddof=1) if len(values) > 1 else 0.0
    if len(values) < 2:
        return float("nan"), float("nan"), float("nan"), float("nan")
    tol = 1e-12 * max(1.0, float(np.abs(values).max()))  # below this, a difference is rounding, not variation
    if sd <= tol:  # every unit moved alike: the tests are undefined; no move at all is no effect
        moved = abs(mean) > tol
        return (float(np.inf * np.sign(mean)) if moved else float("nan"), 0.0 if moved else 1.0, float("nan"),
                float("nan"))
    res = sps.ttest_1samp(values, 0.0)
    try:
        wp = float(sps.wilcoxon(values).pvalue)
    except ValueError:
        wp = float("nan")
    return float(res.statistic), float(res.pvalue), wp, float(mean / sd)


def effect_stats(diff, clusters=None, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> EffectStats:
    """Mean of a per-pair effect with a headword-resampling CI and headword-level tests (pairs if no clusters)."""
    diff = np.asarray(diff, dtype=np.float64)
    if diff.ndim != 1 or len(diff) < 2:
        raise TLIError(f"an effect needs at least 2 pairs (got {diff.size})")
    if not np.isfinite(diff).all():
        raise TLIError("the effect contains NaN or infinite values")
    clusters = list(range(len(diff))) if clusters is None else list(clusters)
    means, _, _ = unit_means(diff, clusters)
    boot = cluster_bootstrap(diff, clusters, resamples, seed)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    t, p, wp, dz = _one_sample(means)
    return EffectStats(n=len(diff), n_units=len(means), mean=float(diff.mean()), ci_low=float(lo), ci_high=float(hi),
                       t=t, p=p, wilcoxon_p=wp, dz=dz)


# --------------------------------------------------------------------------- retrieval: a hit before vs after

def mcnemar(before_hits, after_hits, seed: int = 0, resamples: int = 2000) -> dict:
    """Hit rate before/after on the same words, McNemar's exact test, bootstrap 95% CI of the change.

    Each word (a distinct Swahili query: a headword) is one unit, so words are resampled as they are.
    """
    a = np.asarray(before_hits, dtype=np.float64)
    b = np.asarray(after_hits, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise TLIError("hits before and after must be two columns of the same, non-zero length")
    lost, gained = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    p = float(sps.binomtest(min(lost, gained), lost + gained, 0.5).pvalue) if lost + gained else 1.0
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(resamples, len(a)))
    lo, hi = np.percentile((b[idx] - a[idx]).mean(axis=1), [2.5, 97.5])
    return {"n": int(len(a)), "before": float(a.mean()), "after": float(b.mean()), "change": float(b.mean() - a.mean()),
            "ci_low": float(lo), "ci_high": float(hi), "gained": gained, "lost": lost, "p": p}


# --------------------------------------------------------------------------- seeds as replicates

def replicate_stats(values) -> dict:
    """Seeds as replicates: mean effect over seeds, its t-based 95% CI, and a one-sample t-test against 0.

    With one seed there is no seed-to-seed variation to judge against: CI and p are None.
    """
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    out = {"n": int(len(v)), "mean": float(v.mean()) if len(v) else None, "sd": None, "ci_low": None,
           "ci_high": None, "t": None, "p": None, "values": [float(x) for x in v]}
    if len(v) < 2:
        return out
    sd = float(v.std(ddof=1))
    half = float(sps.t.ppf(0.975, len(v) - 1) * sd / np.sqrt(len(v)))
    t, p, _, _ = _one_sample(v)
    out.update(sd=sd, ci_low=float(v.mean() - half), ci_high=float(v.mean() + half), t=t, p=p)
    return out


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
    return "\n".join([t.to_string(index=False, formatters=fmt), *(f"note: {n}" for n in variation_notes(table))])
