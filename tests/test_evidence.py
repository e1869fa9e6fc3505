"""The specific effect, the retrieval change, seeds and the placebo contrast, against independent computations.

Synthetic embeddings whose every similarity is known make the claims checkable: a change every pair shares
is no specific effect and never earns a star; a change only translations get is detected with its sign.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from tli_core.embeddings import Embeddings
from tli_core.evaluation import evaluate, specific_effect
from tli_core.evidence import Outcome, judge, placebo_contrast, replicated, run_verdict
from tli_core.protocols import get_protocol
from tli_core.stats import cluster_bootstrap, effect_stats, mcnemar, replicate_stats

DIM = 48


def _words(n: int = 40) -> pd.DataFrame:
    """n pairs; Swahili words 0..4 have a second translation (as 54 headwords of the authors' list do)."""
    rows = [(f"sw{i}", f"en{i}") for i in range(n - 5)] + [(f"sw{i}", f"en{i}b") for i in range(5)]
    return pd.DataFrame(rows, columns=["swahili", "english"])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _vectors(df: pd.DataFrame, seed: int = 0) -> tuple[dict, dict]:
    """Random unit vectors per distinct word; translations correlated (cos ~0.3-0.5)."""
    rng = np.random.default_rng(seed)
    sw = {w: rng.normal(size=DIM) for w in dict.fromkeys(df["swahili"])}
    en = {}
    for s, e in zip(df["swahili"], df["english"], strict=True):
        en.setdefault(e, 0.6 * sw[s] + rng.normal(size=DIM))
    return {k: _unit(v) for k, v in sw.items()}, {k: _unit(v) for k, v in en.items()}


def _emb(df: pd.DataFrame, sw: dict, en: dict) -> tuple[Embeddings, Embeddings]:
    """Two layers (0 and 1) holding the same vectors: enough for evaluate()'s layer loop."""
    def one(words, table):
        v = torch.tensor(np.stack([table[w] for w in words]), dtype=torch.float32)
        return Embeddings(torch.stack([v, v]), [0, 1], list(words), 1, "mean")
    return one(df["swahili"], sw), one(df["english"], en)


def _evaluate(df, before, after, seed=0):
    return evaluate({"trained": df}, {"trained": _emb(df, *before)}, {"trained": _emb(df, *after)}, 1,
                    get_protocol("studio"), seed=seed)


def test_nontranslation_similarity_and_ranks_equal_a_loop():
    df = _words()
    sw, en = _vectors(df)
    sw2 = {w: _unit(v + 0.3 * np.random.default_rng(1).normal(size=DIM)) for w, v in sw.items()}
    res = _evaluate(df, (sw, en), (sw2, en))
    gold = df.groupby("swahili")["english"].apply(set).to_dict()
    english = list(dict.fromkeys(df["english"]))
    pairs = res.pairs
    for _, row in pairs.iterrows():
        for side, table in (("before", sw), ("after", sw2)):
            others = [float(table[row.swahili] @ en[e]) for e in english if e not in gold[row.swahili]]
            assert row[f"nontrans_{side}"] == pytest.approx(np.mean(others), abs=1e-5)
            cos = float(table[row.swahili] @ en[row.english])
            assert row[side] == pytest.approx(cos, abs=1e-5)
            assert row[f"spec_{side}"] == pytest.approx(cos - np.mean(others), abs=1e-5)
    ranks = res.retrieval[res.retrieval["layer"] == 1].set_index("swahili")
    for s in dict.fromkeys(df["swahili"]):
        for side, table in (("before", sw), ("after", sw2)):
            sims = {e: float(table[s] @ en[e]) for e in english}
            best = max(sims[e] for e in gold[s])
            assert ranks.loc[s, f"nn_rank_{side}"] == sum(v >= best for e, v in sims.items() if e not in gold[s])


def test_a_change_that_every_pair_shares_is_no_specific_effect_and_no_star():
    """Every pair, translation or not, moves by the same +0.05: the raw change is all there is to see."""
    df = _words()
    rng = np.random.default_rng(3)
    before = rng.uniform(0.2, 0.5, len(df))
    nontrans = rng.uniform(0.0, 0.1, len(df))
    pairs = df.assign(before=before, after=before + 0.05, nontrans_before=nontrans, nontrans_after=nontrans + 0.05)
    pairs["change"] = pairs["after"] - pairs["before"]
    pairs["nontrans_change"] = pairs["nontrans_after"] - pairs["nontrans_before"]
    pairs["spec_before"] = pairs["before"] - pairs["nontrans_before"]
    pairs["spec_after"] = pairs["after"] - pairs["nontrans_after"]
    pairs["spec_change"] = pairs["spec_after"] - pairs["spec_before"]
    spec = specific_effect(pairs, resamples=500)
    assert spec["change"] == pytest.approx(0.0, abs=1e-12)
    assert spec["nontrans_change"] == pytest.approx(0.05)
    v = judge(spec["change"], spec["p"], raw_change=0.05, nontrans_change=spec["nontrans_change"])
    assert v.level == "not_specific" and not v.star
    assert "non-translations moved +0.0500" in v.text


def test_a_direction_every_word_gains_raises_the_raw_cosine_but_not_the_specific_effect():
    """The massive-activation artefact: a shared direction added to every vector after 'training'."""
    df = _words()
    sw, en = _vectors(df)
    shared = _unit(np.random.default_rng(9).normal(size=DIM))
    res = _evaluate(df, (sw, en), ({w: _unit(v + 0.8 * shared) for w, v in sw.items()},
                                   {w: _unit(v + 0.8 * shared) for w, v in en.items()}))
    g = res.summary["groups"]["trained"]
    assert g["change"] > 0.1 and g["p"] < 1e-6  # the paper's raw headline would call this a large gain
    assert g["specific"]["change"] < 0.01  # non-translations rose at least as much
    v = run_verdict(g)
    assert not v.star and v.level in ("not_specific", "worse")


@pytest.mark.parametrize("sign", [1, -1])
def test_a_change_only_translations_get_is_detected_with_its_sign(sign):
    df = _words()
    sw, en = _vectors(df)
    # each Swahili word moves towards (or away from) its own translation(s) only
    target = df.groupby("swahili")["english"].apply(lambda e: np.mean([en[x] for x in e], axis=0)).to_dict()
    after = {w: _unit(v + sign * 0.4 * target[w]) for w, v in sw.items()}
    res = _evaluate(df, (sw, en), (after, en))
    s = res.summary["groups"]["trained"]["specific"]
    assert np.sign(s["change"]) == sign and s["p_holm"] < 1e-3
    assert s["ci_low"] * sign > 0 and s["ci_high"] * sign > 0
    v = run_verdict(res.summary["groups"]["trained"])
    assert v.level == ("unconfirmed" if sign > 0 else "worse")
    assert not v.star  # one seed, no placebo: reported in words, never starred
    assert set(v.missing) == ({"seeds", "placebo"} if sign > 0 else set())


def test_headword_units_match_an_independent_computation():
    """Pairs of one headword share its Swahili vector: the tests take one mean per headword, the CI resamples them."""
    diff = np.array([0.3, 0.3, 0.3, 0.3, 0.3, 0.3, -0.1, 0.05, 0.0, 0.02])
    heads = ["a"] * 6 + ["b", "c", "d", "e"]
    st = effect_stats(diff, heads, seed=0, resamples=4000)
    per_head = np.array([0.3, -0.1, 0.05, 0.0, 0.02])
    want = sps.ttest_1samp(per_head, 0.0)
    assert st.n == 10 and st.n_units == 5
    assert st.t == pytest.approx(want.statistic) and st.p == pytest.approx(want.pvalue)
    assert st.mean == pytest.approx(diff.mean())
    assert st.dz == pytest.approx(per_head.mean() / per_head.std(ddof=1))
    # the CI by hand: resample the 5 headwords, mean over the pairs they bring
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 5, size=(4000, 5))
    sums, counts = np.array([1.8, -0.1, 0.05, 0.0, 0.02]), np.array([6, 1, 1, 1, 1])
    lo, hi = np.percentile(sums[idx].sum(1) / counts[idx].sum(1), [2.5, 97.5])
    assert (st.ci_low, st.ci_high) == pytest.approx((lo, hi))
    # resampling pairs as if independent would claim more certainty than the five headwords carry
    naive = np.percentile(diff[np.random.default_rng(0).integers(0, 10, size=(4000, 10))].mean(1), [2.5, 97.5])
    assert hi - lo > naive[1] - naive[0]
    assert cluster_bootstrap(diff, heads, 10, 0).shape == (10,)


def test_mcnemar_matches_the_exact_binomial_by_hand():
    before = np.array([1, 1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0])
    after = np.array([1, 0, 1, 1, 1, 1, 1, 0, 1, 0, 1, 0])
    r = mcnemar(before, after, seed=0)
    lost, gained = 1, 5
    n = lost + gained
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(min(lost, gained) + 1)) / 2 ** n)
    assert (r["lost"], r["gained"]) == (lost, gained)
    assert r["p"] == pytest.approx(p)
    assert r["change"] == pytest.approx((after.sum() - before.sum()) / len(before))
    assert r["ci_low"] <= r["change"] <= r["ci_high"]
    assert mcnemar([1, 0], [1, 0])["p"] == 1.0


def _outcome(seed, spec_change, pairs=None):
    return Outcome(seed, {"change": spec_change + 0.01, "specific": {"change": spec_change, "p": 0.001,
                                                                      "p_holm": 0.001, "nontrans_change": 0.01}},
                   pairs)


def test_seeds_are_the_replicates_and_the_placebo_contrast_is_tested_per_seed():
    tli = [_outcome(1, 0.020), _outcome(2, 0.024), _outcome(3, 0.019)]
    placebo = [_outcome(1, 0.004), _outcome(2, 0.001), _outcome(3, 0.006)]
    out = replicated(tli, placebo)
    d = np.array([0.016, 0.023, 0.013])
    want = sps.ttest_1samp(d, 0.0)
    assert out["placebo"]["change"] == pytest.approx(d.mean())
    assert out["placebo"]["p"] == pytest.approx(want.pvalue)
    half = sps.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert out["placebo"]["ci_low"] == pytest.approx(d.mean() - half)
    seeds = np.array([0.020, 0.024, 0.019])
    assert out["p"] == pytest.approx(sps.ttest_1samp(seeds, 0.0).pvalue)
    assert out["basis"] == "3 seeds as replicates"
    assert out["verdict"]["star"] and out["verdict"]["level"] == "confirmed"
    # the same effects with a placebo that rose as much: not beyond the placebo, no star
    same = replicated(tli, [_outcome(s, v) for s, v in ((1, 0.021), (2, 0.022), (3, 0.02))])
    assert same["verdict"]["level"] == "not_beyond_placebo" and not same["verdict"]["star"]
    # seeds that disagree: within seed noise... judged against the spread of the seeds, not the words
    noisy = replicated([_outcome(1, 0.03), _outcome(2, -0.02), _outcome(3, 0.01)], placebo)
    assert noisy["verdict"]["level"] == "within_seed_noise" and noisy["p"] > 0.05
    assert not noisy["verdict"]["star"]


def test_one_seed_placebo_contrast_is_per_pair_with_headwords_as_units():
    df = _words()
    rng = np.random.default_rng(5)
    t = df.assign(spec_change=rng.normal(0.02, 0.01, len(df)))
    p = df.assign(spec_change=rng.normal(0.0, 0.01, len(df)))
    c = placebo_contrast([_outcome(7, float(t.spec_change.mean()), t)], [_outcome(7, float(p.spec_change.mean()), p)])
    d = (t["spec_change"] - p["spec_change"]).to_numpy()
    per_head = pd.Series(d).groupby(df["swahili"].to_numpy(), sort=False).mean().to_numpy()
    assert c["change"] == pytest.approx(d.mean())
    assert c["p"] == pytest.approx(sps.ttest_1samp(per_head, 0.0).pvalue)
    assert "35 Swahili headwords" in c["basis"]
    assert placebo_contrast([_outcome(7, 0.02, t)], [_outcome(8, 0.0, p)]) is None  # no matching seed


def test_replicate_stats_with_one_seed_claims_no_spread():
    r = replicate_stats([0.02])
    assert r["n"] == 1 and r["p"] is None and r["ci_low"] is None


def test_benchmark_power_is_shown_and_a_wide_ci_reads_inconclusive():
    from tli_core.downstream import TaskResult, benchmark_verdict, minimum_detectable_change, paired_items

    # 40 items, 4 discordant: (1.96 + 0.84) * sqrt(0.1 / 40) = 0.14: a ±10-point change is below what it can see
    assert minimum_detectable_change(40, 4) == pytest.approx((1.959964 + 0.841621) * math.sqrt(0.1 / 40))
    base = TaskResult("t", pd.DataFrame({"doc_id": range(40), "correct": [1.0] * 20 + [0.0] * 20, "target": "x"}), 0.5)
    tuned_items = base.items.copy()
    tuned_items.loc[[0, 1], "correct"] = 0.0
    tuned_items.loc[[20, 21], "correct"] = 1.0
    r = paired_items(base, TaskResult("t", tuned_items, 0.5))
    assert r["mdc"] == pytest.approx(minimum_detectable_change(40, 4))
    assert r["verdict"] == f"no change beyond ±{r['mdc']:.1%}"  # the CI sits inside what the test can see
    tuned_items.loc[[2, 3], "correct"] = 0.0
    tuned_items.loc[range(22, 28), "correct"] = 1.0  # 4 lost, 8 gained: +10 points, a CI wider than the MDC
    r = paired_items(base, TaskResult("t", tuned_items, 0.5))
    assert r["change"] == pytest.approx(0.1) and r["p_mcnemar"] > 0.05
    assert r["ci_high"] > r["mdc"] and r["verdict"].startswith("inconclusive")
    assert benchmark_verdict({"ci_low": 0.02, "ci_high": 0.2, "mdc": 0.1, "p_mcnemar": 0.01}) == "improved"
    assert benchmark_verdict({"ci_low": -0.01, "ci_high": 0.01, "mdc": 0.05, "p_mcnemar": 1.0}).startswith("no change")
