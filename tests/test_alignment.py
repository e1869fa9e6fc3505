"""Shuffled baseline, precision@k (NN and CSLS) and centering against independent computations."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tli_core import alignment
from tli_core.alignment import (
    center,
    csls_scores,
    curve,
    derangement,
    indistinguishable_layers,
    layer_metrics,
    pair_index,
    scan,
    suggest_layers,
)
from tli_core.embeddings import Embeddings
from tli_core.errors import TLIError


def unit(rows):
    a = np.asarray(rows, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


# Four Swahili words and their English translations in 3-d. Pair 0 and 1 retrieve correctly,
# pair 2 is closest to English 3, pair 3 is closest to English 2 (a swap).
SRC = unit([[1, 0, 0], [0, 1, 0], [0, 0.2, 1], [0.35, 0.3, 1]])
TGT = unit([[0.9, 0.1, 0], [0.1, 1, 0], [0.3, 0.3, 1], [0, 0.25, 1]])


def naive_metrics(src, tgt, perm, ks=(1, 5), k_csls=10):
    n = len(src)
    sims = [[float(np.dot(src[i], tgt[j])) for j in range(n)] for i in range(n)]
    true = [sims[i][i] for i in range(n)]
    shuf = [float(np.dot(src[i], tgt[perm[i]])) for i in range(n)]
    k = min(k_csls, n)
    r_src = [np.mean(sorted(sims[i], reverse=True)[:k]) for i in range(n)]
    r_tgt = [np.mean(sorted([sims[i][j] for i in range(n)], reverse=True)[:k]) for j in range(n)]
    csls = [[2 * sims[i][j] - r_src[i] - r_tgt[j] for j in range(n)] for i in range(n)]
    out = {"true_mean": np.mean(true), "true_std": np.std(true, ddof=1), "shuffled_mean": np.mean(shuf),
           "shuffled_std": np.std(shuf, ddof=1)}
    for kk in ks:
        # rank = how many other targets score at least as high as the true one
        out[f"p{kk}_nn"] = np.mean([sum(sims[i][j] >= sims[i][i] for j in range(n) if j != i) < kk
                                    for i in range(n)])
        out[f"p{kk}_csls"] = np.mean([sum(csls[i][j] >= csls[i][i] for j in range(n) if j != i) < kk
                                      for i in range(n)])
        out[f"chance_p{kk}"] = min(kk, n) / n
    return out


def test_derangement_has_no_fixed_point_and_is_seeded():
    for n in (2, 3, 10, 623):
        p = derangement(n, seed=7)
        assert sorted(p) == list(range(n))
        assert not np.any(p == np.arange(n))
        assert np.array_equal(p, derangement(n, seed=7))
    assert not np.array_equal(derangement(50, 1), derangement(50, 2))
    with pytest.raises(TLIError):
        derangement(1)


def test_hand_made_example_matches_independent_computation():
    perm = derangement(4, seed=0)
    got = layer_metrics(torch.tensor(SRC, dtype=torch.float32), torch.tensor(TGT, dtype=torch.float32), perm)
    want = naive_metrics(SRC, TGT, perm)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    assert got["p1_nn"] == 0.5  # pairs 0 and 1 retrieve; 2 and 3 are swapped
    assert got["p5_nn"] == 1.0
    assert got["gap"] == pytest.approx(want["true_mean"] - want["shuffled_mean"], abs=1e-6)


def test_random_example_matches_independent_computation():
    rng = np.random.default_rng(3)
    src = unit(rng.normal(size=(30, 8)))
    tgt = unit(src + 0.8 * rng.normal(size=(30, 8)))
    perm = derangement(30, seed=5)
    got = layer_metrics(torch.tensor(src, dtype=torch.float32), torch.tensor(tgt, dtype=torch.float32), perm)
    for key, value in naive_metrics(src, tgt, perm).items():
        assert got[key] == pytest.approx(value, abs=1e-5), key


def test_csls_matches_definition():
    rng = np.random.default_rng(0)
    sims = torch.tensor(rng.uniform(-1, 1, size=(12, 12)), dtype=torch.float64)
    got = csls_scores(sims, k=3).numpy()
    s = sims.numpy()
    for i in range(12):
        for j in range(12):
            r_s = np.sort(s[i])[::-1][:3].mean()
            r_t = np.sort(s[:, j])[::-1][:3].mean()
            assert got[i, j] == pytest.approx(2 * s[i, j] - r_s - r_t)


def test_identical_vectors_never_count_as_retrieval_hits():
    same = torch.ones(5, 4) / 2.0  # every word identical: a degenerate, "massive activation" layer
    m = layer_metrics(same, same, derangement(5))
    assert m["true_mean"] == pytest.approx(1.0) and m["shuffled_mean"] == pytest.approx(1.0)
    assert m["gap"] == pytest.approx(0.0, abs=1e-6)
    assert m["p1_nn"] == 0.0 and m["p1_csls"] == 0.0


def test_joint_centering_removes_a_shared_massive_direction():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(20, 16))
    big = np.zeros(16)
    big[0] = 500.0  # one massive dimension shared by every word
    src = unit(base + big)
    tgt = unit(base + 0.3 * rng.normal(size=(20, 16)) + big)
    raw = layer_metrics(torch.tensor(src), torch.tensor(tgt), derangement(20))
    cen = layer_metrics(torch.tensor(src), torch.tensor(tgt), derangement(20), centering="joint")
    assert raw["shuffled_mean"] > 0.99 and raw["true_mean"] > 0.99
    assert cen["shuffled_mean"] < 0.5 < cen["true_mean"]
    s, t = center(torch.tensor(src), torch.tensor(tgt), "joint")
    mu = np.concatenate([src, tgt]).mean(0)
    ref = unit(src - mu)
    np.testing.assert_allclose(s.numpy(), ref, atol=1e-10)


def test_language_centering_subtracts_each_languages_mean():
    rng = np.random.default_rng(2)
    src, tgt = unit(rng.normal(size=(6, 4))), unit(rng.normal(size=(6, 4)))
    s, t = center(torch.tensor(src), torch.tensor(tgt), "language")
    np.testing.assert_allclose(s.numpy(), unit(src - src.mean(0)), atol=1e-10)
    np.testing.assert_allclose(t.numpy(), unit(tgt - tgt.mean(0)), atol=1e-10)
    with pytest.raises(TLIError):
        center(torch.tensor(src), torch.tensor(tgt), "median")


def _emb(vectors, n_layers):
    v = torch.tensor(np.stack(vectors), dtype=torch.float32)
    return Embeddings(v, list(range(len(vectors))), [f"w{i}" for i in range(v.shape[1])], n_layers, "mean")


def test_curve_and_layer_suggestions():
    rng = np.random.default_rng(4)
    noise = [0.05, 5.0, 0.3]  # layer 1 is noise, layer 2 is aligned with a moderate offset
    src = [unit(rng.normal(size=(10, 8))) for _ in noise]
    tgt = [unit(s + n * rng.normal(size=(10, 8))) for s, n in zip(src, noise, strict=True)]
    c = curve(_emb(src, 2), _emb(tgt, 2))
    assert list(c["layer"]) == [0, 1, 2]
    assert list(c["layer_name"]) == ["embeddings", "block 1", "block 2 + final norm"]
    sugg = suggest_layers(c)
    assert sugg["raw_peak"] == 2 and sugg["gap_peak"] == 2  # layer 0 is never suggested
    assert 1 in indistinguishable_layers(c, min_gap=0.3)


def test_scan_on_the_tiny_model(tiny, pairs_df, control_df):
    res = scan(tiny.model, tiny.tokenizer, {"trained": pairs_df, "control": control_df})
    n = tiny.facts.num_layers
    assert len(res.curve) == 2 * (n + 1)
    assert set(res.curve["set"]) == {"trained", "control"}
    assert list(res.pairs.columns[:3]) == ["swahili", "english", "set"]
    assert [c for c in res.pairs.columns if c.startswith("layer_")] == [f"layer_{k}" for k in range(n + 1)]
    # the curve's mean is the mean of the per-pair table
    trained = res.pairs[res.pairs["set"] == "trained"]
    for k in range(n + 1):
        row = res.curve[(res.curve["set"] == "trained") & (res.curve["layer"] == k)].iloc[0]
        assert row["true_mean"] == pytest.approx(trained[f"layer_{k}"].mean(), abs=1e-6)
        assert row["chance_p1"] == pytest.approx(1 / len(pairs_df))


# --------------------------------------------------------------------------- several gold translations

SYN_SW = ["kioo", "kioo", "mto", "kijana", "mvulana", "paka"]
SYN_EN = ["mirror", "glass", "river", "boy", "boy", "cat"]


def synonym_vectors():
    """Perfect alignment with synonyms: each Swahili word sits on one of its translations."""
    rng = np.random.default_rng(5)
    base = {w: rng.normal(size=16) for w in ["mirror", "glass", "river", "boy", "cat"]}
    en = unit([base[e] for e in SYN_EN])
    # kioo is closest to 'mirror' (both of its rows share the one vector of the word 'kioo')
    sw_vec = {"kioo": base["mirror"] + 0.05 * base["glass"], "mto": base["river"], "kijana": base["boy"],
              "mvulana": base["boy"] + 0.01, "paka": base["cat"]}
    sw = unit([sw_vec[s] for s in SYN_SW])
    return torch.tensor(sw, dtype=torch.float32), torch.tensor(en, dtype=torch.float32)


def naive_gold_precision(sw_words, en_words, src, tgt, k):
    """MUSE by hand: distinct Swahili queries over distinct English targets; a hit is any gold in the top k."""
    gold = {}
    for s, e in zip(sw_words, en_words, strict=True):
        gold.setdefault(s, set()).add(e)
    queries = {s: src[sw_words.index(s)] for s in dict.fromkeys(sw_words)}
    targets = {e: tgt[en_words.index(e)] for e in dict.fromkeys(en_words)}
    hits = []
    for s, q in queries.items():
        scores = {e: float(np.dot(q, t)) for e, t in targets.items()}
        best_gold = max(scores[e] for e in gold[s])
        ahead = sum(1 for e, v in scores.items() if e not in gold[s] and v >= best_gold)
        hits.append(ahead < k)
    return float(np.mean(hits)), len(queries), len(targets)


def test_retrieval_counts_every_gold_translation():
    src, tgt = synonym_vectors()
    index = pair_index(SYN_SW, SYN_EN)
    assert len(index.query_rows) == 5 and len(index.target_rows) == 5 and index.several_translations == 1
    m = layer_metrics(src, tgt, derangement(6, 0, index), index=index)
    assert m["p1_nn"] == 1.0 and m["p1_csls"] == 1.0  # perfectly aligned, synonyms and all
    assert (m["queries"], m["targets"]) == (5, 5)
    for k in (1, 5):
        expected, _, _ = naive_gold_precision(SYN_SW, SYN_EN, src.numpy(), tgt.numpy(), k)
        assert m[f"p{k}_nn"] == pytest.approx(expected)
    # the row-by-row rule of the past would call the 'kioo - glass' row a miss
    sims = src.numpy() @ tgt.numpy().T
    assert np.argmax(sims[1]) != 1


@pytest.mark.parametrize("chunk", [4096, 4])  # 4: queries scored in several blocks, each with its own gold mask
def test_gold_retrieval_matches_an_independent_loop_on_random_vectors(chunk, monkeypatch):
    monkeypatch.setattr(alignment, "QUERY_CHUNK", chunk)
    rng = np.random.default_rng(9)
    sw = [f"s{i % 17}" for i in range(30)]  # repeated Swahili words (several translations)
    en = [f"e{(i * 7) % 23}" for i in range(30)]  # repeated English words (several Swahili words)
    word_vec = {w: rng.normal(size=12) for w in set(sw) | set(en)}
    src = unit([word_vec[w] for w in sw])
    tgt = unit([word_vec[w] + 0.8 * word_vec[s] for w, s in zip(en, sw, strict=True)])
    # one word, one vector: repeated words get the vector of their first row
    first = {}
    tgt = np.stack([tgt[first.setdefault(w, i)] for i, w in enumerate(en)])
    index = pair_index(sw, en)
    m = layer_metrics(torch.tensor(src), torch.tensor(tgt), derangement(30, 3, index), index=index)
    for k in (1, 5):
        expected, nq, nt = naive_gold_precision(sw, en, src, tgt, k)
        assert m[f"p{k}_nn"] == pytest.approx(expected)
    # chance: a random ranking of the distinct targets, per query with its number of golds
    counts = [len({e for s2, e in zip(sw, en, strict=True) if s2 == s}) for s in dict.fromkeys(sw)]
    for k in (1, 5):
        expected = np.mean([1 - np.prod([(nt - g - j) / (nt - j) for j in range(k)]) for g in counts])
        assert m[f"chance_p{k}"] == pytest.approx(expected)


def test_the_shuffled_baseline_never_pairs_a_word_with_a_translation():
    index = pair_index(SYN_SW, SYN_EN)
    for seed in range(30):
        perm = derangement(6, seed, index)
        assert sorted(perm) == list(range(6))
        for i, j in enumerate(perm):
            assert SYN_EN[j] not in index.translations[SYN_SW[i]], (seed, i, j)
    with pytest.raises(TLIError, match="shuffled baseline"):
        derangement(3, 0, pair_index(["a", "b", "c"], ["x", "x", "x"]))  # every English word is every translation


def test_suggestions_report_layers_tied_within_the_noise():
    rows = [{"set": "trained", "layer": k, "n": 10, "queries": 10, "true_mean": v, "gap": g, "p1_csls": p}
            for k, v, g, p in [(0, 0.3, 0.0, 0.1), (1, 0.99990, 0.01, 0.2), (2, 0.99998, 0.05, 0.4),
                               (3, 0.99997, 0.01, 0.4), (4, 0.5, 0.2, 0.1)]]
    curve_df = pd.DataFrame(rows)
    exact = suggest_layers(curve_df)  # float32 analysis: 1e-5 differences are real
    assert exact["raw_peak"] == 2 and exact["ties"]["raw_peak"] == [2, 3]
    noisy = suggest_layers(curve_df, noise={1: 1e-4, 2: 1e-4, 3: 1e-4, 4: 1e-4})
    assert noisy["raw_peak"] == 1 and noisy["ties"]["raw_peak"] == [1, 2, 3]  # earliest of the tied
    assert noisy["retrieval_peak"] == 2 and noisy["ties"]["retrieval_peak"] == [2, 3]
    assert noisy["gap_peak"] == 4


def test_a_scan_is_one_forward_and_hands_the_host_only_numbers(tiny):
    """The proxies of a fast scan that hold on any machine: the default pairs in at most 3 forwards, and no
    more than 10 MB of results to the host when no vectors are asked for (the vectors stay on the device)."""
    from tli_core.embeddings import embed
    from tli_core.pairs import load_pairs

    assets = Path(__file__).resolve().parent.parent / "assets"
    sets = {"trained": load_pairs(assets / "pairs_trained.csv"), "control": load_pairs(assets / "pairs_control.csv")}
    res = scan(tiny.model, tiny.tokenizer, sets)
    assert res.stats.forwards <= 3
    layers, pairs = tiny.facts.num_layers + 1, sum(len(df) for df in sets.values())
    queries = sum(df["swahili"].nunique() for df in sets.values())
    # per pair: cosine, shuffled partner, non-translations (f64); per query: NN and CSLS rank (i64); 9 metrics (f32)
    assert res.stats.bytes_to_host == layers * pairs * 8 * 3 + layers * queries * 8 * 2 + layers * 2 * 9 * 4
    assert res.stats.bytes_to_host <= 10 * 2**20
    words = list(sets["control"]["swahili"])
    vectors = embed(tiny.model, tiny.tokenizer, words)  # asked for on the host: every vector counts
    assert vectors.stats.bytes_to_host == layers * len(words) * tiny.model.config.hidden_size * 4


def test_the_scans_device_statistics_equal_a_host_computation(tiny, pairs_df):
    """Every number of the curve, computed where the vectors are, against numpy on host copies of them."""
    from tli_core.embeddings import embed

    res = scan(tiny.model, tiny.tokenizer, {"trained": pairs_df}, seed=4)
    src = embed(tiny.model, tiny.tokenizer, list(pairs_df["swahili"]), out_device="cpu")
    tgt = embed(tiny.model, tiny.tokenizer, list(pairs_df["english"]), out_device="cpu")
    perm = derangement(len(pairs_df), 4, pair_index(list(pairs_df["swahili"]), list(pairs_df["english"])))
    for k in range(tiny.facts.num_layers + 1):
        want = naive_metrics(src.at(k).double().numpy(), tgt.at(k).double().numpy(), perm)
        row = res.curve[res.curve["layer"] == k].iloc[0]
        for key, value in want.items():
            assert row[key] == pytest.approx(value, abs=1e-6), (k, key)
        np.testing.assert_allclose(res.pairs[f"layer_{k}"], (src.at(k) * tgt.at(k)).sum(1).numpy(), atol=1e-6)


def _detail(gaps_per_layer, heads, noise=0.01, seed=0):
    """A LayerDetail whose pairs' true − shuffled differences scatter around the given per-layer gaps."""
    rng = np.random.default_rng(seed)
    n = len(heads)
    d = np.array(gaps_per_layer)[:, None] + rng.normal(0, noise, size=(len(gaps_per_layer), n))
    shuffled = rng.uniform(0.1, 0.2, size=d.shape)
    return alignment.LayerDetail(list(range(len(gaps_per_layer))), shuffled + d, shuffled, shuffled,
                                 np.zeros((len(gaps_per_layer), 1)), np.zeros((len(gaps_per_layer), 1)),
                                 queries=["x"], headwords=list(heads))


def test_the_gap_peak_is_the_argmax_with_a_headword_bootstrap_ci_and_its_indistinguishable_layers():
    heads = [f"h{i // 2}" for i in range(60)]  # 30 headwords, two pairs each
    gaps = [0.0, 0.05, 0.099, 0.06, 0.1, 0.02]
    detail = _detail(gaps, heads)
    u = alignment.gap_uncertainty(detail, resamples=3000, seed=1)
    assert u["best"] == 4 and u["headwords"] == 30
    assert 2 in u["tied"] and 4 in u["tied"] and 1 not in u["tied"] and 5 not in u["tied"]
    # the CI by hand: resample headwords, mean over the pairs they bring
    diff = (detail.cosine - detail.shuffled)[4]
    per_head = pd.Series(diff).groupby(np.array(heads), sort=False).agg(["sum", "count"])
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 30, size=(3000, 30))
    sums, counts = per_head["sum"].to_numpy(), per_head["count"].to_numpy()
    # the same draws over the headwords in the order first seen
    lo, hi = np.percentile(sums[idx].sum(1) / counts[idx].sum(1), [2.5, 97.5])
    assert u["best_ci"] == pytest.approx((lo, hi))
    curve_df = pd.DataFrame({"set": "trained", "layer": range(6), "true_mean": 0.5, "gap": gaps, "p1_csls": 0.1,
                             "n": 60, "queries": 30})
    sugg = suggest_layers(curve_df, detail=detail)
    assert sugg["gap_peak"] == 4 and sugg["ties"]["gap_peak"] == u["tied"] and sugg["mode"] == "scan"


def test_a_held_out_split_chooses_on_half_the_headwords_and_checks_on_the_other():
    heads = [f"h{i // 3}" for i in range(90)]
    split = alignment.headword_split(heads, seed=3)
    by_head = pd.Series(split).groupby(np.array(heads)).nunique()
    assert (by_head == 1).all()  # a headword's pairs are all on one side
    assert abs(split.sum() - 45) <= 3
    detail = _detail([0.0, 0.02, 0.08, 0.03], heads)
    curve_df = pd.DataFrame({"set": "trained", "layer": range(4), "true_mean": 0.5, "gap": [0.0, 0.02, 0.08, 0.03],
                             "p1_csls": 0.1, "n": 90, "queries": 30})
    sugg = suggest_layers(curve_df, detail=detail, held_out=True, seed=3)
    h = sugg["held_out"]
    assert sugg["mode"] == "scan-held-out" and h["layer"] == 2 == sugg["gap_peak"] and h["confirmed"]
    assert h["select_headwords"] + h["check_headwords"] == 30
    assert h["check_ci"][0] <= h["check_gap"] <= h["check_ci"][1]
