"""Before/after evaluation of a TLI run under a named protocol, for the trained and the control set.

Every word is embedded at every layer by the base model (before) and by the model with the
adapter (after) -- attached, or merged into the quantized base when the protocol says so -- so
the evaluation-layer statistics and the whole before/after curve come from the same passes.
All the poolings the protocols need come from one forward per model state.

Three effects are measured per set and layer (see ``alignment.py`` for the per-pair values):
- the *raw* change of cos(Swahili, English), as the paper reports it (its pair-level t-test kept);
- the *specific* change: the raw change minus the change of the same Swahili word's similarity to
  the pool's non-translations -- zero when training moves every pair alike;
- the *retrieval* change: hit@1 and hit@5 by NN and CSLS per Swahili word, McNemar's exact test.
CIs resample Swahili headwords and the specific effect's tests take one value per headword
(``stats.py``); p-values over the whole curve are corrected across layers (Holm and BH).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .alignment import LayerDetail, conditioning_report, curve_and_detail
from .embeddings import Embeddings, embed_poolings
from .files import read_json, write_csv, write_json
from .layers import layer_name
from .precision import DEQUANT, dequantized_via, four_bit_layers
from .progress import Progress, no_progress
from .protocols import Protocol
from .stats import correct_pvalues, effect_stats, mcnemar, paired_stats

SetEmbeddings = dict[str, tuple[Embeddings, Embeddings]]  # set -> (swahili, english)
TABLES = ("pairs", "pairs_layers", "curve", "layer_stats", "retrieval")
RETRIEVAL = {"hit1_nn": ("nn_rank", 1), "hit5_nn": ("nn_rank", 5), "hit1_csls": ("csls_rank", 1),
             "hit5_csls": ("csls_rank", 5)}  # measure -> (rank, k): a hit@k is rank < k
EVIDENCE_VERSION = 2  # summaries with the specific effect and the retrieval change (1: raw change only)


def embed_sets(model, tokenizer, sets: dict[str, pd.DataFrame], poolings, precision: str = "float32",
               progress: Progress = no_progress) -> dict[str, SetEmbeddings]:
    """pooling -> set -> (Swahili, English) embeddings at all layers, from one pass over the distinct words."""
    poolings = [poolings] if isinstance(poolings, str) else list(dict.fromkeys(poolings))
    if not poolings:
        return {}
    words = list(dict.fromkeys(w for df in sets.values() for col in ("swahili", "english") for w in df[col]))
    where = {w: i for i, w in enumerate(words)}
    embs = embed_poolings(model, tokenizer, words, poolings, precision=precision, progress=progress, out_device=None)
    out: dict[str, SetEmbeddings] = {}
    for pooling, emb in embs.items():
        out[pooling] = {}
        for name, df in sets.items():
            def part(column, df=df, emb=emb):
                idx = torch.as_tensor([where[w] for w in df[column]], device=emb.vectors.device)
                return Embeddings(emb.vectors.index_select(1, idx), emb.layers, list(df[column]), emb.num_layers,
                                  emb.pooling, emb.precision, emb.stats)
            out[pooling][name] = (part("swahili"), part("english"))
    return out


@dataclass
class EvalResult:
    pairs: pd.DataFrame  # eval layer: swahili, english, set, before, after, change, nontrans_*, spec_*
    pairs_layers: pd.DataFrame  # the same columns and a layer column, every layer
    curve: pd.DataFrame  # set, phase (before/after), layer, layer_name, alignment metrics
    layer_stats: pd.DataFrame  # set, layer, raw/specific/retrieval statistics of that layer, corrected across layers
    retrieval: pd.DataFrame  # set, layer, swahili: NN and CSLS rank of its best translation before/after
    summary: dict = field(default_factory=dict)


def pair_frame(df: pd.DataFrame, name: str, b: LayerDetail, a: LayerDetail, i: int) -> pd.DataFrame:
    """Per pair at the ``i``-th layer: raw cosine, non-translation similarity and specificity, before/after."""
    out = pd.DataFrame({"swahili": df["swahili"].to_numpy(), "english": df["english"].to_numpy(), "set": name})
    out["before"], out["after"] = b.cosine[i], a.cosine[i]
    out["change"] = out["after"] - out["before"]
    out["nontrans_before"], out["nontrans_after"] = b.nontrans[i], a.nontrans[i]
    out["nontrans_change"] = out["nontrans_after"] - out["nontrans_before"]
    out["spec_before"], out["spec_after"] = b.specificity[i], a.specificity[i]
    out["spec_change"] = out["spec_after"] - out["spec_before"]
    return out


def specific_effect(pairs: pd.DataFrame, seed: int = 0, resamples: int = 10_000) -> dict:
    """The change in specificity of one set at one layer: mean with a headword-resampling CI, headword-level
    t and Wilcoxon tests, and the means it is made of."""
    ok = pairs[np.isfinite(pairs["spec_change"])]
    st = effect_stats(ok["spec_change"], ok["swahili"], seed=seed, resamples=resamples).to_dict()
    return dict(st, change=st["mean"], spec_before=float(ok["spec_before"].mean()),
                spec_after=float(ok["spec_after"].mean()), nontrans_before=float(ok["nontrans_before"].mean()),
                nontrans_after=float(ok["nontrans_after"].mean()),
                nontrans_change=float(ok["nontrans_change"].mean()), unit="Swahili headword")


def retrieval_change(b: LayerDetail, a: LayerDetail, i: int, seed: int = 0) -> dict:
    """hit@1 / hit@5 by NN and CSLS before vs after, per Swahili word: McNemar's exact test and a CI."""
    return {m: mcnemar(getattr(b, rank)[i] < k, getattr(a, rank)[i] < k, seed=seed)
            for m, (rank, k) in RETRIEVAL.items()}


def _layer_rows(name: str, df: pd.DataFrame, b: LayerDetail, a: LayerDetail, n_layers: int, seed: int) -> pd.DataFrame:
    rows = []
    for i, k in enumerate(b.layers):
        pairs = pair_frame(df, name, b, a, i)
        st = paired_stats(pairs["before"], pairs["after"], name, seed, resamples=1000, clusters=pairs["swahili"])
        spec = specific_effect(pairs, seed, resamples=1000)
        hit = mcnemar(b.csls_rank[i] < 1, a.csls_rank[i] < 1, seed=seed, resamples=500)
        rows.append({"set": name, "layer": k, "layer_name": layer_name(k, n_layers),
                     **{key: val for key, val in st.to_dict().items() if key != "group"},
                     "spec_change": spec["change"], "spec_ci_low": spec["ci_low"], "spec_ci_high": spec["ci_high"],
                     "spec_t": spec["t"], "spec_p": spec["p"], "spec_wilcoxon_p": spec["wilcoxon_p"],
                     "spec_dz": spec["dz"], "nontrans_change": spec["nontrans_change"],
                     "hit1_csls_before": hit["before"], "hit1_csls_after": hit["after"],
                     "hit1_csls_change": hit["change"], "hit1_csls_p": hit["p"]})
    rows = pd.DataFrame(rows)
    # a p-value per layer over the whole curve is one test per layer: corrected across the layers
    for col, out in (("p", "p"), ("spec_p", "spec_p"), ("hit1_csls_p", "hit1_csls_p")):
        rows[f"{out}_holm"] = correct_pvalues(rows[col].to_numpy(), "holm")
        rows[f"{out}_bh"] = correct_pvalues(rows[col].to_numpy(), "bh")
    return rows


def _retrieval_rows(name: str, b: LayerDetail, a: LayerDetail) -> pd.DataFrame:
    n_q = len(b.queries)
    return pd.DataFrame({"set": name, "layer": np.repeat(b.layers, n_q), "swahili": b.queries * len(b.layers),
                         "nn_rank_before": b.nn_rank.reshape(-1), "nn_rank_after": a.nn_rank.reshape(-1),
                         "csls_rank_before": b.csls_rank.reshape(-1), "csls_rank_after": a.csls_rank.reshape(-1)})


def evaluate(sets: dict[str, pd.DataFrame], before: SetEmbeddings, after: SetEmbeddings, eval_layer: int,
             protocol: Protocol, seed: int = 0, extra: dict | None = None) -> EvalResult:
    """Tables and statistics of a before/after pair of embeddings under ``protocol``."""
    pairs, long, curves, lstats, ret, groups = [], [], [], [], [], {}
    for name, df in sets.items():
        cb, b = curve_and_detail(*before[name], "none", seed, name)
        ca, a = curve_and_detail(*after[name], "none", seed, name)
        cb, ca = cb.assign(phase="before"), ca.assign(phase="after")
        n_layers = before[name][0].num_layers
        li = b.layers.index(eval_layer)
        at_layer = pair_frame(df, name, b, a, li)
        pairs.append(at_layer)
        long += [pair_frame(df, name, b, a, i).assign(layer=k) for i, k in enumerate(b.layers)]
        rows = _layer_rows(name, df, b, a, n_layers, seed)
        lstats.append(rows)
        ret.append(_retrieval_rows(name, b, a))
        curves += [cb, ca]
        stats = paired_stats(at_layer["before"], at_layer["after"], name, seed, clusters=at_layer["swahili"]).to_dict()
        row_b, row_a = cb[cb.layer == eval_layer].iloc[0], ca[ca.layer == eval_layer].iloc[0]
        for key in ("shuffled_mean", "gap", "p1_nn", "p1_csls", "p5_csls", "chance_p1"):
            stats[f"{key}_before"] = float(row_b[key])
            stats[f"{key}_after"] = float(row_a[key])
        at = rows[rows["layer"] == eval_layer].iloc[0]
        stats["p_holm"] = float(at["p_holm"])
        stats["specific"] = dict(specific_effect(at_layer, seed), p_holm=float(at["spec_p_holm"]),
                                 p_bh=float(at["spec_p_bh"]))
        stats["retrieval"] = retrieval_change(b, a, li, seed)
        groups[name] = stats
    curve = pd.concat(curves, ignore_index=True)
    curve = curve[["set", "phase"] + [c for c in curve.columns if c not in ("set", "phase")]]
    first = next(iter(before.values()))[0]
    long_df = pd.concat(long, ignore_index=True)
    long_df = long_df[["swahili", "english", "set", "layer"] + [c for c in long_df.columns
                                                               if c not in ("swahili", "english", "set", "layer")]]
    summary = {"protocol": protocol.name, "protocol_title": protocol.title, "protocol_description": protocol.describe(),
               "merged": protocol.merged, "eval_layer": eval_layer,
               "eval_layer_name": layer_name(eval_layer, first.num_layers), "num_layers": first.num_layers,
               "pooling": first.pooling, "precision": first.precision, "evidence_version": EVIDENCE_VERSION,
               "units": "Swahili headword", "groups": groups, **(extra or {})}
    return EvalResult(pairs=pd.concat(pairs, ignore_index=True), pairs_layers=long_df, curve=curve,
                      layer_stats=pd.concat(lstats, ignore_index=True), retrieval=pd.concat(ret, ignore_index=True),
                      summary=summary)


def groups_at_layer(pairs_layers: pd.DataFrame, retrieval: pd.DataFrame | None, layer_stats: pd.DataFrame | None,
                    layer: int, seed: int = 0) -> dict[str, dict]:
    """Per set, the statistics a summary holds for its evaluation layer, for any other ``layer`` of a run (read from
    its tables): raw paired statistics, the specific effect (with its p corrected across layers) and the retrieval
    change. Sets without the per-pair columns of the specific effect (runs evaluated before it existed) get only
    the raw statistics."""
    out = {}
    at = pairs_layers[pairs_layers["layer"] == layer]
    for name, df in at.groupby("set", sort=False):
        df = df.reset_index(drop=True)
        g = paired_stats(df["before"], df["after"], str(name), seed, clusters=df["swahili"]).to_dict()
        if "spec_change" in df:
            g["specific"] = specific_effect(df, seed)
            if layer_stats is not None and "spec_p_holm" in layer_stats:
                row = layer_stats[(layer_stats["set"] == name) & (layer_stats["layer"] == layer)]
                if len(row):
                    g["specific"].update(p_holm=float(row["spec_p_holm"].iloc[0]), p_bh=float(row["spec_p_bh"].iloc[0]))
                    g["p_holm"] = float(row["p_holm"].iloc[0])
        if retrieval is not None and "csls_rank_before" in retrieval:
            r = retrieval[(retrieval["set"] == name) & (retrieval["layer"] == layer)]
            if len(r):
                g["retrieval"] = {m: mcnemar(r[f"{rank}_before"].to_numpy() < k, r[f"{rank}_after"].to_numpy() < k,
                                             seed=seed) for m, (rank, k) in RETRIEVAL.items()}
        out[str(name)] = g
    return out


def conditioning_of_sets(model, tokenizer, sets: dict[str, pd.DataFrame], before: dict[str, SetEmbeddings],
                         precision: str = "float32", progress: Progress = no_progress) -> dict[str, dict]:
    """Per pooling, the layers whose per-pair 'before' cosines move beyond 1e-3 when the 4-bit weights are rounded to
    bf16 before the float32 arithmetic instead of dequantized straight to float32 (which every figure uses): those
    per-pair values are ill-conditioned. Empty for a model without 4-bit layers or a compute-dtype analysis (its
    precision check covers it)."""
    if precision != "float32" or not four_bit_layers(model) or not before:
        return {}
    with dequantized_via(model, "bfloat16"):
        rounded = embed_sets(model, tokenizer, sets, list(before), precision, progress)
    out = {}
    for pooling, by_set in before.items():
        exact = np.concatenate([_pair_cosines(*by_set[name]) for name in sets], axis=1)
        alt = np.concatenate([_pair_cosines(*rounded[pooling][name]) for name in sets], axis=1)
        report = conditioning_report(exact, alt, next(iter(by_set.values()))[0].layers)
        out[pooling] = {"weights": DEQUANT["float32"], "layers": report["layer"].tolist(),
                        "max_abs": report["max_abs_delta"].tolist(),
                        "ill_conditioned_layers": [int(k) for k in report.loc[report["ill_conditioned"], "layer"]]}
    return out


def _pair_cosines(src: Embeddings, tgt: Embeddings) -> np.ndarray:
    return (src.vectors.double() * tgt.vectors.double()).sum(-1).cpu().numpy()


def merge_difference(attached: SetEmbeddings, merged: SetEmbeddings) -> dict:
    """How far merging moved each pair's 'after' cosine: per set, per layer, max and mean |Δcos|."""
    out = {}
    for name in attached:
        cos = []
        for side in (attached, merged):
            src, tgt = side[name]
            cos.append((src.vectors.double() * tgt.vectors.double()).sum(-1).cpu().numpy())
        delta = np.abs(cos[1] - cos[0])
        out[name] = {"layers": list(attached[name][0].layers), "max_abs": delta.max(1).tolist(),
                     "mean_abs": delta.mean(1).tolist()}
    return out


def write_eval(eval_dir: Path, result: EvalResult) -> None:
    """Write one protocol's tables and summary into ``<run>/eval/<protocol>/`` (each file atomically)."""
    target = Path(eval_dir) / result.summary["protocol"]
    for name in TABLES:
        write_csv(target / f"{name}.csv", getattr(result, name))
    write_json(target / "summary.json", result.summary)


def read_summary(eval_dir: Path, protocol: str) -> dict | None:
    return read_json(Path(eval_dir) / protocol / "summary.json")


def protocols_side_by_side(summaries: dict[str, dict]) -> pd.DataFrame:
    """One row per (protocol, set): how it was measured and what it found, for reading protocols side by side."""
    rows = []
    for name, s in summaries.items():
        for group, g in s["groups"].items():
            merge = (s.get("merge_vs_attached") or {}).get(group)
            rows.append({
                "protocol": name, "set": group, "layer": s["eval_layer"], "pooling": s["pooling"],
                "weights": "full FT blocks" if s.get("weights") == "full" else
                "adapter merged" if s.get("merged") else "adapter attached",
                "base": s.get("base_quantization") or "as trained", "precision": s.get("precision"),
                "n": g["n"], "mean before": g["mean_before"], "mean after": g["mean_after"], "change": g["change"],
                "% change": g["pct_change"], "p (paired t)": g["p"], "shuffled before": g["shuffled_mean_before"],
                "shuffled after": g["shuffled_mean_after"], "gap before": g["gap_before"], "gap after": g["gap_after"],
                "P@1 CSLS before": g["p1_csls_before"], "P@1 CSLS after": g["p1_csls_after"],
                "chance P@1": g["chance_p1_before"],
                "merged vs attached max |Δcos|": (merge["max_abs"][merge["layers"].index(s["eval_layer"])]
                                                  if merge else None),
            })
    return pd.DataFrame(rows)
