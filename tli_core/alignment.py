"""Layer-by-layer Swahili–English alignment, with the evidence needed to trust it.

For each layer: the mean/std cosine of true translation pairs, the same for shuffled pairs
(a fixed-seed derangement of the English side that never pairs a word with one of its own
translations), their gap, and retrieval precision@k over the pair pool by nearest neighbour
and by CSLS (k=10), next to the chance level. Retrieval follows MUSE: each distinct Swahili
word is a query over the distinct English words, and a hit is *any* of its gold translations
in the top k (54 Swahili words of the authors' list have several). A high cosine alone is not
alignment: massive shared activations push every pair, shuffled or not, towards 1; only the
gap and retrieval tell the two apart.

Per pair, beside its cosine: the same Swahili word's mean cosine to the English words of the pool
that are none of its translations (``nontrans``). Their difference is the pair's *specificity*; a
training that raises every similarity alike leaves it unchanged, so its change is the effect that is
specific to translations. The Swahili side is used because it is the anchor of the loss and the
query of retrieval: the same word is compared with the same pool before and after. Per distinct
Swahili word (query): the rank of its best gold translation by NN and by CSLS, so hit@k before vs
after can be tested word by word.

The statistics are computed where the vectors are (the GPU for a GPU model); only the per-layer
numbers and the per-pair values are moved to the host.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .embeddings import Embeddings, EmbedStats, embed_poolings
from .errors import TLIError
from .layers import layer_name
from .precision import NOISE_LIMIT, dequantized_via, four_bit_layers
from .progress import Progress, no_progress

CENTERING = ("none", "joint", "language")
CSLS_K = 10
PRECISION_KS = (1, 5)
QUERY_CHUNK = 4096  # queries scored at a time: bounds the [queries x targets] similarity block
FP32_NOISE = 1e-5  # float32 analysis: batched and per-word computations agree to this (tests/test_embeddings.py)


# --------------------------------------------------------------------------- which words translate which

@dataclass
class PairIndex:
    """The gold standard of a pair set: which Swahili word translates which English word.

    ``queries``/``targets`` are the distinct Swahili/English words (row of their first
    occurrence); ``gold_targets[q]`` the targets that are valid translations of query q.
    """

    n: int
    query_rows: list[int]
    target_rows: list[int]
    gold_targets: list[list[int]]
    translations: dict[str, set[str]]  # Swahili word -> its English translations
    swahili: list[str]
    english: list[str]
    pair_query: list[int] = field(default_factory=list)  # pair row -> index of its Swahili word among the queries

    _on_device: dict = field(default_factory=dict, repr=False, compare=False)

    def device_tensors(self, device, chunk: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(query rows, target rows, the gold mask [queries x targets] per chunk of ``chunk`` queries) on
        ``device``, built once and reused for every layer: one host->device copy per scan, not per layer."""
        key = (str(device), chunk)
        if key not in self._on_device:
            blocks = []
            for start in range(0, len(self.query_rows), chunk):
                golds = self.gold_targets[start:start + chunk]
                rows = [r for r, g in enumerate(golds) for _ in g]
                block = torch.zeros((len(golds), len(self.target_rows)), dtype=torch.bool)
                block[rows, [t for g in golds for t in g]] = True
                blocks.append(block.to(device))
            self._on_device[key] = (torch.as_tensor(self.query_rows, device=device),
                                    torch.as_tensor(self.target_rows, device=device), blocks)
        return self._on_device[key]

    def is_gold(self, i: int, j: int) -> bool:
        """Whether the English word of row j is a valid translation of the Swahili word of row i."""
        return self.english[j] in self.translations[self.swahili[i]]

    @property
    def several_translations(self) -> int:
        return sum(len(t) > 1 for t in self.translations.values())


def pair_index(swahili: Sequence[str], english: Sequence[str]) -> PairIndex:
    swahili, english = [str(s) for s in swahili], [str(e) for e in english]
    if len(swahili) != len(english):
        raise TLIError("every Swahili word needs its English translation (columns of different length)")
    translations: dict[str, set[str]] = {}
    for s, e in zip(swahili, english, strict=True):
        translations.setdefault(s, set()).add(e)
    first_s, first_e = {}, {}
    for i, (s, e) in enumerate(zip(swahili, english, strict=True)):
        first_s.setdefault(s, i)
        first_e.setdefault(e, i)
    target_of = {e: t for t, e in enumerate(first_e)}
    query_of = {s: q for q, s in enumerate(first_s)}
    gold = [sorted(target_of[e] for e in translations[s]) for s in first_s]
    return PairIndex(len(swahili), list(first_s.values()), list(first_e.values()), gold, translations,
                     swahili, english, [query_of[s] for s in swahili])


def derangement(n: int, seed: int = 0, index: PairIndex | None = None) -> np.ndarray:
    """A seeded permutation pairing no Swahili word with one of its translations (no fixed point either).

    Starts from a single random n-cycle (Sattolo's algorithm) and, where ``index`` says a
    shuffled pair would be a real translation (a word with several translations, or an English
    word shared by two Swahili words), swaps in a partner that keeps both positions valid.
    """
    if n < 2:
        raise TLIError("a shuffled baseline needs at least 2 pairs")
    rng = np.random.default_rng(seed)
    perm = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))  # j < i: this is what makes it a single cycle
        perm[i], perm[j] = perm[j], perm[i]
    if index is None:
        return perm

    def bad(i: int, target: int) -> bool:
        return target == i or index.is_gold(i, target)

    for _ in range(20 * n):
        wrong = [i for i in range(n) if bad(i, perm[i])]
        if not wrong:
            return perm
        i = wrong[int(rng.integers(0, len(wrong)))]
        ok = [j for j in range(n) if j != i and not bad(i, perm[j]) and not bad(j, perm[i])]
        if not ok:
            break
        j = ok[int(rng.integers(0, len(ok)))]
        perm[i], perm[j] = perm[j], perm[i]
    raise TLIError("cannot build a shuffled baseline: too many pairs share their words, so almost every "
                   "shuffled pair would be a real translation; use a larger or more varied pair set")


# --------------------------------------------------------------------------- one layer's numbers

def center(src: torch.Tensor, tgt: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean-centering correction, then re-normalisation.

    ``joint`` removes the mean of all words of both languages (the direction every word
    shares, where massive activations live); ``language`` removes each language's own mean.
    """
    if mode == "none":
        return src, tgt
    if mode == "joint":
        mu = torch.cat([src, tgt]).mean(0, keepdim=True)
        src, tgt = src - mu, tgt - mu
    elif mode == "language":
        src, tgt = src - src.mean(0, keepdim=True), tgt - tgt.mean(0, keepdim=True)
    else:
        raise TLIError(f"unknown centering {mode!r}; use one of {', '.join(CENTERING)}")
    return torch.nn.functional.normalize(src, dim=-1), torch.nn.functional.normalize(tgt, dim=-1)


def csls_scores(sims: torch.Tensor, k: int = CSLS_K, r_tgt: torch.Tensor | None = None) -> torch.Tensor:
    """CSLS (Conneau et al. 2018): 2 cos(x, y) - r_T(x) - r_S(y), mean over k nearest neighbours.

    ``r_tgt`` (each target's neighbourhood over *all* queries) is given when ``sims`` holds only
    a chunk of the queries.
    """
    k = min(k, sims.shape[1], sims.shape[0])
    r_src = sims.topk(k, dim=1).values.mean(1, keepdim=True)  # each source's neighbourhood in targets
    if r_tgt is None:
        r_tgt = sims.topk(k, dim=0).values.mean(0, keepdim=True)  # each target's neighbourhood in sources
    return 2 * sims - r_src - r_tgt


def gold_ranks(scores: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Per query: how many non-gold targets score at least as high as its best gold target.

    Ties count against the query, so identical vectors can never look like a hit.
    """
    best = scores.masked_fill(~gold, float("-inf")).max(dim=1, keepdim=True).values
    return ((scores >= best) & ~gold).sum(1)


def chance_at_k(gold_counts: Sequence[int], n_targets: int, k: int) -> float:
    """Expected P@k of a random ranking: 1 - C(T-g, k) / C(T, k), averaged over queries with g golds."""
    k = min(k, n_targets)
    miss = [math.comb(n_targets - g, k) / math.comb(n_targets, k) for g in gold_counts]
    return float(1 - np.mean(miss))


def retrieval(src: torch.Tensor, tgt: torch.Tensor, index: PairIndex) -> dict[str, torch.Tensor]:
    """P@k by NN and CSLS over the distinct words, gold = every valid translation (device tensors).

    Also per query: ``nn_ranks``/``csls_ranks`` (non-gold targets scoring at least as high as its best gold
    one; a hit@k is rank < k) and ``nontrans`` (its mean cosine to the targets that are none of its
    translations; NaN where every target is one)."""
    query_rows, target_rows, golds = index.device_tensors(src.device, QUERY_CHUNK)
    q, t = src[query_rows], tgt[target_rows.to(tgt.device)]
    k = min(CSLS_K, q.shape[0], t.shape[0])
    # each target's CSLS neighbourhood over all queries, chunked so no [Q x T] block exceeds QUERY_CHUNK rows
    top = None
    for start in range(0, q.shape[0], QUERY_CHUNK):
        sims = q[start:start + QUERY_CHUNK] @ t.T
        best = sims if top is None else torch.cat([top, sims])
        top = best.topk(min(k, best.shape[0]), dim=0).values
    r_tgt = top.mean(0, keepdim=True)
    nn_ranks, csls_ranks, nontrans = [], [], []
    for start in range(0, q.shape[0], QUERY_CHUNK):
        queries = range(start, min(start + QUERY_CHUNK, q.shape[0]))
        sims = q[start:queries.stop] @ t.T
        gold = golds[start // QUERY_CHUNK].to(sims.device)
        nn_ranks.append(gold_ranks(sims, gold))
        csls_ranks.append(gold_ranks(csls_scores(sims, CSLS_K, r_tgt), gold))
        others = (~gold).sum(1)
        mean_others = sims.masked_fill(gold, 0.0).sum(1) / others.clamp_min(1)
        nontrans.append(torch.where(others > 0, mean_others, torch.full_like(mean_others, float("nan"))))
    nn, csls = torch.cat(nn_ranks), torch.cat(csls_ranks)
    out = {"nn_ranks": nn, "csls_ranks": csls, "nontrans": torch.cat(nontrans)}
    for kk in PRECISION_KS:
        out[f"p{kk}_nn"] = (nn < kk).float().mean()
        out[f"p{kk}_csls"] = (csls < kk).float().mean()
    return out


def layer_metrics(src: torch.Tensor, tgt: torch.Tensor, perm: np.ndarray, centering: str = "none",
                  index: PairIndex | None = None) -> dict:
    """All alignment numbers for one layer; rows of src and tgt are translations of each other.

    Without ``index`` every row is its own word (no synonyms).
    """
    n = src.shape[0]
    index = index or pair_index([f"s{i}" for i in range(n)], [f"t{i}" for i in range(n)])
    values, _ = _layer_tensors(src, tgt, torch.as_tensor(perm, device=src.device), centering, index)
    row = {"n": n}
    row.update({key: float(v) for key, v in zip(_METRICS, values.cpu().tolist(), strict=True)})
    row.update(_chances(index))
    return row


_METRICS = ("true_mean", "true_std", "shuffled_mean", "shuffled_std", "gap") + tuple(
    f"p{k}_{m}" for k in PRECISION_KS for m in ("nn", "csls"))


def _layer_tensors(src, tgt, perm, centering, index) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(the metrics of ``_METRICS`` as one tensor, the per-pair and per-query values of ``PER_PAIR``/``PER_QUERY``),
    on the vectors' device."""
    src, tgt = center(src.float(), tgt.float(), centering)
    n = src.shape[0]
    true = (src * tgt).sum(1)
    shuffled = (src * tgt[perm]).sum(1)
    zero = torch.zeros((), device=src.device)
    ret = retrieval(src, tgt, index)
    values = torch.stack([true.mean(), true.std() if n > 1 else zero, shuffled.mean(),
                          shuffled.std() if n > 1 else zero, true.mean() - shuffled.mean()]
                         + [ret[m] for m in _METRICS[5:]])
    pair_query = torch.as_tensor(index.pair_query, device=src.device)
    detail = {"cosine": true, "shuffled": shuffled, "nontrans": ret["nontrans"][pair_query],
              "nn_rank": ret["nn_ranks"], "csls_rank": ret["csls_ranks"]}
    return values, detail


PER_PAIR = ("cosine", "shuffled", "nontrans")  # [pairs]: its cosine, its shuffled partner's, its non-translations'
PER_QUERY = ("nn_rank", "csls_rank")  # [queries]: the rank of the best gold translation


def _chances(index: PairIndex) -> dict:
    counts = [len(g) for g in index.gold_targets]
    return {f"chance_p{k}": chance_at_k(counts, len(index.target_rows), k) for k in PRECISION_KS} | {
        "queries": len(index.query_rows), "targets": len(index.target_rows)}


@dataclass
class LayerDetail:
    """Per-pair and per-query values of every layer of one set, on the host (numpy)."""

    layers: list[int]
    cosine: np.ndarray  # [layers, pairs]: cos(Swahili, its English translation)
    shuffled: np.ndarray  # [layers, pairs]: cos(Swahili, its shuffled partner)
    nontrans: np.ndarray  # [layers, pairs]: mean cos(Swahili, the pool's English words that are no translation)
    nn_rank: np.ndarray  # [layers, queries]
    csls_rank: np.ndarray  # [layers, queries]
    queries: list[str]  # the distinct Swahili words, in query order
    headwords: list[str]  # each pair's Swahili word (its unit for resampling)

    @property
    def specificity(self) -> np.ndarray:
        return self.cosine - self.nontrans


def _layer_sweep(src: Embeddings, tgt: Embeddings, centering: str, seed: int) -> tuple[np.ndarray, LayerDetail, dict]:
    """Every layer's metrics [layers x metrics] and per-pair/per-query values, moved to the host once."""
    if src.layers != tgt.layers or len(src.words) != len(tgt.words):
        raise TLIError("source and target embeddings must cover the same layers and number of pairs")
    index = pair_index(src.words, tgt.words)
    perm = torch.as_tensor(derangement(len(src.words), seed, index), device=src.vectors.device)
    rows, details = [], {key: [] for key in PER_PAIR + PER_QUERY}
    for i in range(len(src.layers)):
        values, detail = _layer_tensors(src.vectors[i], tgt.vectors[i], perm, centering, index)
        rows.append(values)
        for key in PER_PAIR:
            details[key].append(detail[key].double())
        for key in PER_QUERY:
            details[key].append(detail[key])
    metrics = torch.stack(rows).cpu()
    src.stats.add_host_copy(metrics)
    host = {}
    for key, parts in details.items():
        host[key] = torch.stack(parts).cpu()
        src.stats.add_host_copy(host[key])
    detail = LayerDetail(list(src.layers), *(host[k].numpy() for k in PER_PAIR + PER_QUERY),
                         queries=[index.swahili[r] for r in index.query_rows], headwords=list(index.swahili))
    return metrics.numpy(), detail, _chances(index)


def curve(src: Embeddings, tgt: Embeddings, centering: str = "none", seed: int = 0,
          set_name: str = "trained") -> pd.DataFrame:
    """One row per layer: true-pair cosine, shuffled baseline, gap, P@k (NN and CSLS), chance."""
    return curve_and_cosines(src, tgt, centering, seed, set_name)[0]


def curve_and_cosines(src, tgt, centering, seed, set_name) -> tuple[pd.DataFrame, np.ndarray]:
    """The curve and the per-pair cosines [pairs x layers]."""
    c, detail = curve_and_detail(src, tgt, centering, seed, set_name)
    return c, detail.cosine.T


def curve_and_detail(src, tgt, centering, seed, set_name) -> tuple[pd.DataFrame, LayerDetail]:
    """The curve and every per-pair / per-query value behind it (:class:`LayerDetail`)."""
    metrics, detail, chances = _layer_sweep(src, tgt, centering, seed)
    rows = []
    for i, k in enumerate(src.layers):
        row = {"set": set_name, "layer": k, "layer_name": layer_name(k, src.num_layers), "n": len(src.words)}
        row.update({key: float(v) for key, v in zip(_METRICS, metrics[i], strict=True)})
        row.update(chances)
        rows.append(row)
    return pd.DataFrame(rows), detail


def pair_table(pairs: pd.DataFrame, cosines: np.ndarray, layers: Sequence[int], set_name: str) -> pd.DataFrame:
    """Per pair: its words, its set, and its cosine at every computed layer (``layer_<k>``)."""
    table = pd.DataFrame({"swahili": pairs["swahili"].to_numpy(), "english": pairs["english"].to_numpy(),
                          "set": set_name})
    layer_cols = pd.DataFrame(cosines, columns=[f"layer_{k}" for k in layers])
    return pd.concat([table, layer_cols], axis=1)


# --------------------------------------------------------------------------- where to inject

def headword_split(headwords: Sequence[str], seed: int = 0) -> np.ndarray:
    """A seeded half of the Swahili headwords (True = the half that chooses a layer, False = the half that checks it):
    all pairs of one headword fall on the same side, so the check is on words the choice never saw."""
    heads = list(dict.fromkeys(headwords))
    rng = np.random.default_rng(seed)
    chosen = set(rng.permutation(len(heads))[: (len(heads) + 1) // 2].tolist())
    select = {h for i, h in enumerate(heads) if i in chosen}
    return np.array([h in select for h in headwords])


def gap_uncertainty(detail: LayerDetail, mask: np.ndarray | None = None, resamples: int = 2000, seed: int = 0,
                    first_layer: int = 1) -> dict:
    """The gap (true − shuffled) per layer with a 95% CI resampling Swahili headwords, its argmax, and the layers not
    distinguishable from it: those whose bootstrap difference to the best layer's gap has a CI reaching 0.

    ``mask`` restricts it to some pairs (a held-out half); layers before ``first_layer`` are not candidates (layer 0 is
    the embedding table, which LoRA cannot train)."""
    keep = np.ones(detail.cosine.shape[1], dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    heads = [h for h, k in zip(detail.headwords, keep, strict=True) if k]
    d = (detail.cosine - detail.shuffled)[:, keep].T  # [pairs, layers]
    codes, uniq = pd.factorize(pd.Series(heads, dtype=object), sort=False)
    sums = np.zeros((len(uniq), d.shape[1]))
    np.add.at(sums, codes, d)
    counts = np.bincount(codes, minlength=len(uniq)).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(uniq), size=(resamples, len(uniq)))
    weights = np.zeros((resamples, len(uniq)))
    np.add.at(weights, (np.repeat(np.arange(resamples), len(uniq)), draws.reshape(-1)), 1.0)
    boot = (weights @ sums) / (weights @ counts)[:, None]  # [resamples, layers]
    layers = list(detail.layers)
    gap = sums.sum(0) / counts.sum()
    candidates = [i for i, k in enumerate(layers) if k >= first_layer] or list(range(len(layers)))
    best = max(candidates, key=lambda i: gap[i])
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    diff_low = np.percentile(boot[:, [best]] - boot, 2.5, axis=0)
    tied = [layers[i] for i in candidates if i == best or diff_low[i] <= 0]
    wins = np.bincount(np.argmax(boot[:, candidates], axis=1), minlength=len(candidates)) / resamples
    return {"layers": layers, "gap": gap.tolist(), "ci_low": lo.tolist(), "ci_high": hi.tolist(),
            "best": layers[best], "best_ci": (float(lo[best]), float(hi[best])), "tied": tied,
            "p_best": {layers[i]: float(w) for i, w in zip(candidates, wins, strict=True)},
            "headwords": len(uniq), "pairs": int(keep.sum())}


def suggest_layers(curve_df: pd.DataFrame, set_name: str = "trained",
                   noise: dict[int, float] | None = None, detail: LayerDetail | None = None,
                   held_out: bool = False, seed: int = 0) -> dict:
    """Where to inject: the raw-cosine peak (the paper's rule) next to the gap and retrieval peaks.

    The gap peak is the layer with the largest gap; with the scan's per-pair ``detail`` it comes with a 95% CI and
    the layers not distinguishable from it (bootstrap over Swahili headwords). ``held_out``: the layer is chosen on
    half of the headwords and its gap checked on the other half, so the choice is not evaluated on the words that
    made it (``held_out`` in the result). For the raw and retrieval peaks, layers within the measured noise of the
    best (``noise``: layer -> bound on a layer mean's error; float32 analysis by default) are *tied* and the
    earliest of them (the cheapest to train) is named, so no suggestion rests on a difference below the noise.
    """
    df = curve_df[curve_df["set"] == set_name]
    if df.empty:
        raise TLIError(f"no curve rows for set {set_name!r}")
    inner = df[df["layer"] > 0]  # layer 0 is the embedding table, not something LoRA can train
    inner = inner if not inner.empty else df
    queries = int(inner["queries"].iloc[0]) if "queries" in inner else int(inner["n"].iloc[0])
    out: dict = {"ties": {}, "mode": "scan"}
    for key, col, kind in (("raw_peak", "true_mean", "mean"), ("gap_peak", "gap", "gap"),
                           ("retrieval_peak", "p1_csls", "retrieval")):
        values = inner.set_index("layer")[col]

        def margin(k, kind=kind):
            if kind == "retrieval":  # counts of queries: only exact ties
                return 0.25 / max(queries, 1)
            return (2.0 if kind == "gap" else 1.0) * (noise or {}).get(int(k), FP32_NOISE)

        top = values.idxmax()
        tied = sorted(int(k) for k, v in values.items() if values[top] - v <= margin(k) + margin(top))
        out[key] = int(top) if kind == "gap" else tied[0]  # the gap peak is the argmax: its ties are shown
        out["ties"][key] = tied
    if detail is not None:
        if held_out:
            select = headword_split(detail.headwords, seed)
            chosen = gap_uncertainty(detail, select, seed=seed)
            check = gap_uncertainty(detail, ~select, seed=seed + 1)
            k = check["layers"].index(chosen["best"])
            out["held_out"] = {"layer": chosen["best"], "select_headwords": chosen["headwords"],
                               "check_headwords": check["headwords"], "check_gap": check["gap"][k],
                               "check_ci": (check["ci_low"][k], check["ci_high"][k]), "check_best": check["best"],
                               "check_tied": check["tied"], "confirmed": chosen["best"] in check["tied"],
                               "select_tied": chosen["tied"]}
            out["mode"] = "scan-held-out"
            boot = chosen
        else:
            boot = gap_uncertainty(detail, seed=seed)
        out["gap_peak"] = boot["best"]
        out["ties"]["gap_peak"] = boot["tied"]
        out["gap_ci"] = boot["best_ci"]
        out["gap_bootstrap"] = boot
    return out


def indistinguishable_layers(curve_df: pd.DataFrame, min_gap: float = 0.02,
                             set_name: str = "trained") -> list[int]:
    """Layers where true and shuffled pairs are about as similar (a warning for the user)."""
    df = curve_df[curve_df["set"] == set_name]
    return [int(k) for k in df.loc[df["gap"].abs() < min_gap, "layer"]]


# --------------------------------------------------------------------------- the precision of the numbers

def precision_check(model, tokenizer, sets: dict[str, pd.DataFrame], pooling: str = "mean",
                    layers: Sequence[int] | None = None, sample: int | None = None, seed: int = 0,
                    precision: str = "compute", computed: Embeddings | None = None) -> pd.DataFrame:
    """Per layer, how far a pair's cosine in ``precision`` is from float32 on the same weights.

    Every pair is recomputed (``sample``: a seeded sample of that many instead, whose largest error then bounds
    the rest only statistically: see :func:`check_scope`). ``computed``: the words' vectors in ``precision``
    already (a scan's), so only the float32 pass runs. Returns layer, max and mean |Δcos| per pair, the |Δ| of the
    layer mean, the pairs checked and in all, and ``flagged`` (max above ``NOISE_LIMIT``).
    """
    frames = [df[["swahili", "english"]] for df in sets.values() if df is not None and len(df)]
    pairs = pd.concat(frames, ignore_index=True).drop_duplicates()
    total = len(pairs)
    if sample and total > sample:
        pairs = pairs.sample(n=sample, random_state=seed).reset_index(drop=True)
    words = list(pairs["swahili"]) + list(pairs["english"])
    n = len(pairs)
    cos = {}
    for prec in (precision, "float32"):
        if prec == precision and computed is not None:
            where = {w: i for i, w in enumerate(computed.words)}
            idx = torch.as_tensor([where[w] for w in words], device=computed.vectors.device)
            v = computed.vectors.index_select(1, idx).double()
            if layers is not None:
                v = v[[computed.layers.index(k) for k in layers]]
        else:
            emb = embed_poolings(model, tokenizer, words, [pooling], layers, precision=prec, out_device=None)[pooling]
            v = emb.vectors.double()
        cos[prec] = (v[:, :n] * v[:, n:]).sum(-1).cpu().numpy()  # [layers, pairs]
    delta = np.abs(cos[precision] - cos["float32"])
    mean_delta = np.abs(cos[precision].mean(1) - cos["float32"].mean(1))
    report = pd.DataFrame({"layer": emb.layers, "max_abs_delta": delta.max(1), "mean_abs_delta": delta.mean(1),
                           "layer_mean_delta": mean_delta, "pairs_checked": n, "pairs_total": total})
    report["flagged"] = report["max_abs_delta"] > NOISE_LIMIT
    return report


def check_scope(report: pd.DataFrame, confidence: float = 0.95) -> str:
    """What a precision check covered, in words: every pair, or a sample and what its largest error guarantees.

    For the largest of n sampled errors, the share of all pairs whose error exceeds it is at most
    1 - (1 - confidence)^(1/n) with that confidence (the sample maximum's coverage)."""
    n, total = int(report["pairs_checked"].iloc[0]), int(report.get("pairs_total", report["pairs_checked"]).iloc[0])
    if n >= total:
        return f"all {total} pairs checked"
    share = 1 - (1 - confidence) ** (1 / n)
    return (f"a seeded sample of {n} of {total} pairs: with {confidence:.0%} confidence at most {share:.1%} of all "
            f"pairs have an error above the largest seen")


def conditioning_report(cos_exact: np.ndarray, cos_rounded: np.ndarray, layers: Sequence[int]) -> pd.DataFrame:
    """Per layer, how far per-pair cosines ([layers, pairs]) move between 4-bit weights dequantized straight to
    float32 and rounded to bf16 first; ``ill_conditioned`` where a pair moves beyond ``NOISE_LIMIT``."""
    delta = np.abs(np.asarray(cos_exact) - np.asarray(cos_rounded))
    report = pd.DataFrame({"layer": list(layers), "max_abs_delta": delta.max(1), "mean_abs_delta": delta.mean(1),
                           "pairs": delta.shape[1]})
    report["ill_conditioned"] = report["max_abs_delta"] > NOISE_LIMIT
    return report


def conditioning_check(model, tokenizer, sets: dict[str, pd.DataFrame], pooling: str = "mean",
                       layers: Sequence[int] | None = None, computed: Embeddings | None = None) -> pd.DataFrame | None:
    """Per layer, whether per-pair values depend on how the 4-bit weights are dequantized (float32 arithmetic both
    ways); None for a model without 4-bit layers. ``computed``: the words' float32-analysis vectors already."""
    if not four_bit_layers(model):
        return None
    frames = [df[["swahili", "english"]] for df in sets.values() if df is not None and len(df)]
    pairs = pd.concat(frames, ignore_index=True).drop_duplicates()
    words, n = list(pairs["swahili"]) + list(pairs["english"]), len(pairs)

    def cosines(emb: Embeddings, chosen) -> np.ndarray:
        where = {w: i for i, w in enumerate(emb.words)}
        v = emb.vectors.index_select(1, torch.as_tensor([where[w] for w in words], device=emb.vectors.device))
        if chosen is not None:
            v = v[[emb.layers.index(k) for k in chosen]]
        v = v.double()
        return (v[:, :n] * v[:, n:]).sum(-1).cpu().numpy()

    exact = computed if computed is not None else embed_poolings(model, tokenizer, words, [pooling], layers,
                                                                 out_device=None)[pooling]
    with dequantized_via(model, "bfloat16"):
        rounded = embed_poolings(model, tokenizer, words, [pooling], layers, out_device=None)[pooling]
    return conditioning_report(cosines(exact, rounded.layers), cosines(rounded, None), rounded.layers)


def layer_noise(report: pd.DataFrame | None) -> dict[int, float] | None:
    """Bound on a layer mean's error from a precision report (None: float32, the arithmetic floor)."""
    if report is None:
        return None
    return {int(r.layer): max(float(r.mean_abs_delta), FP32_NOISE) for r in report.itertuples()}


# --------------------------------------------------------------------------- the scan

@dataclass
class ScanResult:
    curve: pd.DataFrame  # one row per (set, layer)
    pairs: pd.DataFrame  # one row per pair, layer_<k> columns
    num_layers: int
    pooling: str
    centering: str
    precision: str = "float32"
    seconds: float = 0.0
    precision_report: pd.DataFrame | None = None  # per-layer per-pair error bound, when not float32
    conditioning: pd.DataFrame | None = None  # per layer: per-pair change between fp32- and bf16-dequantized weights
    stats: EmbedStats = field(default_factory=EmbedStats)
    embeddings: dict[str, tuple[Embeddings, Embeddings]] = field(default_factory=dict, repr=False)
    details: dict[str, LayerDetail] = field(default_factory=dict, repr=False)  # per set: per-pair/per-query values

    @property
    def ill_conditioned_layers(self) -> list[int]:
        if self.conditioning is None:
            return []
        return [int(k) for k in self.conditioning.loc[self.conditioning["ill_conditioned"], "layer"]]

    @property
    def flagged_layers(self) -> list[int]:
        if self.precision_report is None:
            return []
        return [int(k) for k in self.precision_report.loc[self.precision_report["flagged"], "layer"]]


def scan(model, tokenizer, sets: dict[str, pd.DataFrame], pooling: str = "mean", centering: str = "none",
         layers: Sequence[int] | None = None, seed: int = 0, batch_size: int | None = None,
         progress: Progress = no_progress, keep_embeddings: bool = False,
         drop_dims: Sequence[int] | None = None, precision: str = "float32", check_sample: int | None = None
         ) -> ScanResult:
    """The layer scan ("pilot"): embed every distinct word of every set once, all layers, and score them.

    ``sets`` maps a set name (``trained``, ``control``) to its pair frame. All words go through
    the model in as few packed forwards as fit; statistics are computed on the model's device;
    each set is scored on its own pool. In ``precision="compute"`` a precision check runs too.
    """
    if centering not in CENTERING:
        raise TLIError(f"unknown centering {centering!r}; use one of {', '.join(CENTERING)}")
    start = time.perf_counter()
    names = [n for n, df in sets.items() if df is not None and len(df)]
    if not names:
        raise TLIError("no word pairs to scan")
    words: list[str] = []
    for name in names:
        words += list(sets[name]["swahili"]) + list(sets[name]["english"])
    distinct = list(dict.fromkeys(words))  # a word shared by two sets or pairs is embedded once
    emb = embed_poolings(model, tokenizer, distinct, [pooling], layers, precision=precision, batch_size=batch_size,
                         progress=progress, drop_dims=drop_dims, out_device=None)[pooling]
    where = {w: i for i, w in enumerate(distinct)}
    curves, tables, kept, details = [], [], {}, {}
    for name in names:
        df = sets[name]

        def part(column, df=df):
            idx = torch.as_tensor([where[w] for w in df[column]], device=emb.vectors.device)
            return Embeddings(emb.vectors.index_select(1, idx), emb.layers, list(df[column]), emb.num_layers,
                              pooling, precision, emb.stats)

        src, tgt = part("swahili"), part("english")
        c, detail = curve_and_detail(src, tgt, centering, seed, name)
        details[name] = detail
        curves.append(c)
        tables.append(pair_table(df, detail.cosine.T, emb.layers, name))
        if keep_embeddings:
            kept[name] = (src, tgt)
    report = None
    if precision != "float32" and check_sample != 0:  # 0: no check (benchmarks of the bare scan); None: every pair
        report = precision_check(model, tokenizer, {n: sets[n] for n in names}, pooling, emb.layers,
                                 sample=check_sample, seed=seed, precision=precision,
                                 computed=None if drop_dims else emb)
    conditioning = None
    if precision == "float32" and check_sample != 0 and not drop_dims:  # 4-bit models: which dequantization matters
        conditioning = conditioning_check(model, tokenizer, {n: sets[n] for n in names}, pooling, emb.layers,
                                          computed=emb)
    return ScanResult(curve=pd.concat(curves, ignore_index=True), pairs=pd.concat(tables, ignore_index=True),
                      num_layers=emb.num_layers, pooling=pooling, centering=centering, precision=precision,
                      seconds=time.perf_counter() - start, precision_report=report, stats=emb.stats,
                      embeddings=kept, details=details, conditioning=conditioning)
