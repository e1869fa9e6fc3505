"""Paired statistics and the compare command against scipy, computed independently here."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from tli_core.cli import main
from tli_core.errors import TLIError
from tli_core.stats import compare_table, correct_pvalues, paired_stats


@pytest.fixture
def table():
    rng = np.random.default_rng(11)
    before = rng.normal(0.32, 0.08, 120)
    after = before + rng.normal(0.09, 0.05, 120)
    return pd.DataFrame({"word": [f"w{i}" for i in range(120)], "cos_before": before, "cos_after": after,
                         "split": ["trained"] * 100 + ["control"] * 20})


def test_paired_stats_match_scipy(table):
    b, a = table["cos_before"].to_numpy(), table["cos_after"].to_numpy()
    s = paired_stats(b, a, "all", seed=1)
    t, p = sps.ttest_rel(a, b)
    w = sps.wilcoxon(a, b)
    d = a - b
    assert s.n == 120
    assert s.mean_before == pytest.approx(b.mean()) and s.mean_after == pytest.approx(a.mean())
    assert s.std_before == pytest.approx(np.std(b, ddof=1)) and s.std_after == pytest.approx(np.std(a, ddof=1))
    assert s.change == pytest.approx(a.mean() - b.mean())
    assert s.pct_change == pytest.approx((a.mean() - b.mean()) / b.mean() * 100)
    assert s.t == pytest.approx(t) and s.p == pytest.approx(p)
    assert s.wilcoxon_w == pytest.approx(w.statistic) and s.wilcoxon_p == pytest.approx(w.pvalue)
    assert s.cohens_dz == pytest.approx(d.mean() / d.std(ddof=1))
    assert s.ci_low < d.mean() < s.ci_high
    # the bootstrap CI is close to the t-interval for a mean this well behaved
    half = sps.t.ppf(0.975, 119) * d.std(ddof=1) / np.sqrt(120)
    assert s.ci_low == pytest.approx(d.mean() - half, abs=0.003)
    assert s.ci_high == pytest.approx(d.mean() + half, abs=0.003)


def test_paper_percentages_are_relative_changes_of_the_mean():
    s = paired_stats([0.3211, 0.3211, 0.3211], [0.4113, 0.4112, 0.4114])
    assert s.pct_change == pytest.approx(28.09, abs=0.01)


def test_compare_by_group_matches_scipy(table):
    out, used = compare_table(table, "cos_before", "cos_after", "split")
    assert list(out["group"]) == ["trained", "control"]
    for _, row in out.iterrows():
        g = table[table["split"] == row["group"]]
        t, p = sps.ttest_rel(g["cos_after"], g["cos_before"])
        assert row["n"] == len(g) and row["t"] == pytest.approx(t) and row["p"] == pytest.approx(p)
    assert used.dropped == 0


def test_compare_refuses_what_it_cannot_compare(table):
    with pytest.raises(TLIError, match="column 'nope' not found"):
        compare_table(table, "nope", "cos_after")
    bad = table.assign(cos_after=table["cos_after"].astype(object))
    bad.loc[3, "cos_after"] = "n/a?"
    with pytest.raises(TLIError, match="not numeric"):
        compare_table(bad, "cos_before", "cos_after")
    holes = table.copy()
    holes.loc[[1, 5, 9], "cos_before"] = np.nan
    with pytest.raises(TLIError, match="3 row\\(s\\) have no number"):
        compare_table(holes, "cos_before", "cos_after")
    out, used = compare_table(holes, "cos_before", "cos_after", drop_nan=True)
    assert used.dropped == 3 and out.loc[0, "n"] == 117
    kept = holes.dropna()
    assert out.loc[0, "t"] == pytest.approx(sps.ttest_rel(kept["cos_after"], kept["cos_before"]).statistic)


def test_too_few_pairs():
    with pytest.raises(TLIError, match="at least 2"):
        paired_stats([0.1], [0.2])


def test_benjamini_hochberg_and_holm_by_hand():
    p = np.array([0.01, 0.04, 0.03, 0.2, 0.001])
    np.testing.assert_allclose(correct_pvalues(p, "bh"), sps.false_discovery_control(p))
    # Holm by hand: sort, multiply by (m - rank), running max, cap at 1
    order = np.argsort(p)
    m = len(p)
    running, holm = 0.0, np.empty(m)
    for rank, idx in enumerate(order):
        running = max(running, (m - rank) * p[idx])
        holm[idx] = min(running, 1.0)
    np.testing.assert_allclose(correct_pvalues(p, "holm"), holm)
    np.testing.assert_allclose(correct_pvalues(np.array([0.5, np.nan]), "bh"), [0.5, np.nan])


def test_compare_cli(tmp_path, table, capsys):
    path = tmp_path / "published.csv"
    table.to_csv(path, index=False)
    assert main(["compare", "--csv", str(path), "--before", "cos_before", "--after", "cos_after",
                 "--group", "split", "--out", str(tmp_path / "stats.csv")]) == 0
    out = capsys.readouterr().out
    assert "before = column 'cos_before', after = column 'cos_after', grouped by 'split'" in out
    g = table[table["split"] == "control"]
    p = sps.ttest_rel(g["cos_after"], g["cos_before"]).pvalue
    assert f"{p:.3g}" in out
    saved = pd.read_csv(tmp_path / "stats.csv")
    assert saved.loc[saved["group"] == "control", "p"].iloc[0] == pytest.approx(p)


def test_compare_cli_errors_are_one_line(tmp_path, table, capsys):
    path = tmp_path / "t.csv"
    table.to_csv(path, index=False)
    assert main(["compare", "--csv", str(path), "--before", "x", "--after", "cos_after"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: column 'x' not found") and err.count("\n") == 1
    assert main(["compare", "--csv", str(tmp_path / "missing.csv"), "--before", "a", "--after", "b"]) == 2
