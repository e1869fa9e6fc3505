"""Before/after evaluation of a TLI run, for the trained and the control set separately.

Every word is embedded at every layer by the base model (before) and by the model with the
adapter attached (after; not merged into 4-bit weights), so the evaluation-layer statistics
and the whole before/after curve come from the same two passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .alignment import curve as layer_curve
from .embeddings import Embeddings, embed
from .files import write_csv
from .layers import layer_name
from .progress import Progress, no_progress
from .stats import paired_stats

SetEmbeddings = dict[str, tuple[Embeddings, Embeddings]]  # set -> (swahili, english)


def embed_sets(model, tokenizer, sets: dict[str, pd.DataFrame], pooling: str = "mean",
               progress: Progress = no_progress,
               batch_size: int | None = None) -> SetEmbeddings:
    """All layers for every word of every set, in one batched pass."""
    words, spans = [], {}
    for name, df in sets.items():
        spans[name] = (len(words), len(df))
        words += list(df["swahili"]) + list(df["english"])
    emb = embed(model, tokenizer, words, pooling=pooling, progress=progress, batch_size=batch_size)
    out = {}
    for name, (offset, n) in spans.items():
        def part(a, b):
            return Embeddings(emb.vectors[:, a:b], emb.layers, words[a:b], emb.num_layers, pooling)
        out[name] = (part(offset, offset + n), part(offset + n, offset + 2 * n))
    return out


@dataclass
class EvalResult:
    pairs: pd.DataFrame  # eval layer: swahili, english, set, before, after, change
    pairs_layers: pd.DataFrame  # long: swahili, english, set, layer, before, after, change
    curve: pd.DataFrame  # set, phase (before/after), layer, layer_name, alignment metrics
    layer_stats: pd.DataFrame  # set, layer, paired statistics of that layer
    summary: dict = field(default_factory=dict)


def _cosines(pair: tuple[Embeddings, Embeddings]) -> np.ndarray:
    src, tgt = pair
    return (src.vectors.double() * tgt.vectors.double()).sum(-1).cpu().numpy()  # [layers, pairs], exact in CSV


def evaluate(sets: dict[str, pd.DataFrame], before: SetEmbeddings, after: SetEmbeddings,
             eval_layer: int, seed: int = 0) -> EvalResult:
    """Tables and statistics of a before/after pair of embeddings."""
    pairs, long, curves, lstats, groups = [], [], [], [], {}
    for name, df in sets.items():
        b, a = _cosines(before[name]), _cosines(after[name])
        layers = before[name][0].layers
        n_layers = before[name][0].num_layers
        li = layers.index(eval_layer)
        base = pd.DataFrame({"swahili": df["swahili"].to_numpy(), "english": df["english"].to_numpy(), "set": name})
        pairs.append(base.assign(before=b[li], after=a[li], change=a[li] - b[li]))
        for i, k in enumerate(layers):
            long.append(base.assign(layer=k, before=b[i], after=a[i], change=a[i] - b[i]))
            st = paired_stats(b[i], a[i], name, seed, resamples=1000)
            lstats.append({"set": name, "layer": k, "layer_name": layer_name(k, n_layers), **{
                key: val for key, val in st.to_dict().items() if key != "group"}})
        cb = layer_curve(*before[name], seed=seed, set_name=name).assign(phase="before")
        ca = layer_curve(*after[name], seed=seed, set_name=name).assign(phase="after")
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
    summary = {"eval_layer": eval_layer, "eval_layer_name": layer_name(eval_layer, first.num_layers),
               "num_layers": first.num_layers, "pooling": first.pooling, "groups": groups}
    return EvalResult(pairs=pd.concat(pairs, ignore_index=True), pairs_layers=pd.concat(long, ignore_index=True),
                      curve=curve, layer_stats=pd.DataFrame(lstats), summary=summary)


def write_eval(run, result: EvalResult) -> None:
    """Write the tables into ``<run>/eval/`` (each file atomically)."""
    for name in ("pairs", "pairs_layers", "curve", "layer_stats"):
        write_csv(run.eval_dir / f"{name}.csv", getattr(result, name))
