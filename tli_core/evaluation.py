"""Before/after evaluation of a TLI run under a named protocol, for the trained and the control set.

Every word is embedded at every layer by the base model (before) and by the model with the
adapter (after) -- attached, or merged into the quantized base when the protocol says so -- so
the evaluation-layer statistics and the whole before/after curve come from the same passes.
All the poolings the protocols need come from one forward per model state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .alignment import curve_and_cosines
from .embeddings import Embeddings, embed_poolings
from .files import read_json, write_csv, write_json
from .layers import layer_name
from .progress import Progress, no_progress
from .protocols import Protocol
from .stats import correct_pvalues, paired_stats

SetEmbeddings = dict[str, tuple[Embeddings, Embeddings]]  # set -> (swahili, english)
TABLES = ("pairs", "pairs_layers", "curve", "layer_stats")


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
    pairs: pd.DataFrame  # eval layer: swahili, english, set, before, after, change
    pairs_layers: pd.DataFrame  # long: swahili, english, set, layer, before, after, change
    curve: pd.DataFrame  # set, phase (before/after), layer, layer_name, alignment metrics
    layer_stats: pd.DataFrame  # set, layer, paired statistics of that layer, p corrected across layers
    summary: dict = field(default_factory=dict)


def evaluate(sets: dict[str, pd.DataFrame], before: SetEmbeddings, after: SetEmbeddings, eval_layer: int,
             protocol: Protocol, seed: int = 0, extra: dict | None = None) -> EvalResult:
    """Tables and statistics of a before/after pair of embeddings under ``protocol``."""
    pairs, long, curves, lstats, groups = [], [], [], [], {}
    for name, df in sets.items():
        cb, b = curve_and_cosines(*before[name], "none", seed, name)
        ca, a = curve_and_cosines(*after[name], "none", seed, name)
        b, a = b.T, a.T  # [layers, pairs]
        cb, ca = cb.assign(phase="before"), ca.assign(phase="after")
        layers = before[name][0].layers
        n_layers = before[name][0].num_layers
        li = layers.index(eval_layer)
        base = pd.DataFrame({"swahili": df["swahili"].to_numpy(), "english": df["english"].to_numpy(), "set": name})
        pairs.append(base.assign(before=b[li], after=a[li], change=a[li] - b[li]))
        rows = []
        for i, k in enumerate(layers):
            long.append(base.assign(layer=k, before=b[i], after=a[i], change=a[i] - b[i]))
            st = paired_stats(b[i], a[i], name, seed, resamples=1000)
            rows.append({"set": name, "layer": k, "layer_name": layer_name(k, n_layers),
                         **{key: val for key, val in st.to_dict().items() if key != "group"}})
        rows = pd.DataFrame(rows)
        # a p-value per layer over the whole curve is one test per layer: corrected across the layers
        rows["p_holm"] = correct_pvalues(rows["p"].to_numpy(), "holm")
        rows["p_bh"] = correct_pvalues(rows["p"].to_numpy(), "bh")
        lstats.append(rows)
        curves += [cb, ca]
        stats = paired_stats(b[li], a[li], name, seed).to_dict()
        row_b, row_a = cb[cb.layer == eval_layer].iloc[0], ca[ca.layer == eval_layer].iloc[0]
        for key in ("shuffled_mean", "gap", "p1_nn", "p1_csls", "p5_csls", "chance_p1"):
            stats[f"{key}_before"] = float(row_b[key])
            stats[f"{key}_after"] = float(row_a[key])
        groups[name] = stats
    curve = pd.concat(curves, ignore_index=True)
    curve = curve[["set", "phase"] + [c for c in curve.columns if c not in ("set", "phase")]]
    first = next(iter(before.values()))[0]
    summary = {"protocol": protocol.name, "protocol_title": protocol.title, "protocol_description": protocol.describe(),
               "merged": protocol.merged, "eval_layer": eval_layer,
               "eval_layer_name": layer_name(eval_layer, first.num_layers), "num_layers": first.num_layers,
               "pooling": first.pooling, "precision": first.precision, "groups": groups, **(extra or {})}
    return EvalResult(pairs=pd.concat(pairs, ignore_index=True), pairs_layers=pd.concat(long, ignore_index=True),
                      curve=curve, layer_stats=pd.concat(lstats, ignore_index=True), summary=summary)


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
