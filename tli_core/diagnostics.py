"""Artifact diagnostics: does a high similarity come from the words, or from a few massive activations?

Per layer, over a sample of words:
  * the norm of the first token's hidden state (BOS, or the first word piece where the
    tokenizer adds none) against the mean norm of the other tokens;
  * the largest |activation| relative to the median |activation|, and the dimensions that
    carry the largest mean |activation| (massive activations, Sun et al. 2024).
Then the same scan again with those tokens or dimensions left out, so the user sees at a
glance how much of the curve they were.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .alignment import scan
from .anatomy import input_device, num_layers
from .embeddings import make_batch, run_layers, tokenise
from .layers import layer_name

TOP_DIMS = 3


def _layer_stats(hidden: torch.Tensor, mask: torch.Tensor) -> dict:
    h = hidden.float()
    m = mask.to(h.device).bool()
    norms = h.norm(dim=-1)  # [B, T]
    first = norms[:, 0]
    rest_mask = m.clone()
    rest_mask[:, 0] = False
    tokens = h[m]  # [n_tokens, D]
    mags = tokens.abs()
    return {
        "first_norm_sum": first.sum().item(), "n_first": len(first),
        "rest_norm_sum": norms[rest_mask].sum().item(), "n_rest": int(rest_mask.sum()),
        "max_abs": mags.max().item(), "median_abs": mags.median().item(),
        "dim_abs_sum": mags.sum(0).cpu(), "n_tokens": tokens.shape[0],
        "argmax_dim": int(mags.max(0).values.argmax()),
    }


def activation_report(model, tokenizer, words: Sequence[str], batch_size: int = 64,
                      layers: Sequence[int] | None = None) -> pd.DataFrame:
    """One row per layer: first-token vs other-token norms, max/median |activation|, top dimensions."""
    n = num_layers(model)
    layers = list(range(n + 1)) if layers is None else list(layers)
    tok = tokenise(tokenizer, list(words))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = input_device(model)
    acc: dict[int, dict] = {}
    with torch.inference_mode():
        for start in range(0, len(words), batch_size):
            idx = list(range(start, min(start + batch_size, len(words))))
            ids, mask, _ = make_batch(tok, idx, pad, "mean", device)
            stats = run_layers(model, ids, mask, layers, lambda k, h, mask=mask: _layer_stats(h, mask))
            for k, s in stats.items():
                a = acc.setdefault(k, {"first_norm_sum": 0.0, "n_first": 0, "rest_norm_sum": 0.0, "n_rest": 0,
                                       "max_abs": 0.0, "medians": [], "dim_abs_sum": 0, "n_tokens": 0})
                for key in ("first_norm_sum", "n_first", "rest_norm_sum", "n_rest", "n_tokens"):
                    a[key] += s[key]
                a["max_abs"] = max(a["max_abs"], s["max_abs"])
                a["medians"].append(s["median_abs"])
                a["dim_abs_sum"] = a["dim_abs_sum"] + s["dim_abs_sum"]
    rows = []
    for k in sorted(acc):
        a = acc[k]
        dim_mean = (a["dim_abs_sum"] / a["n_tokens"]).numpy()
        top = np.argsort(dim_mean)[::-1][:TOP_DIMS]
        first = a["first_norm_sum"] / max(a["n_first"], 1)
        rest = a["rest_norm_sum"] / a["n_rest"] if a["n_rest"] else float("nan")
        median = float(np.median(a["medians"]))
        rows.append({
            "layer": k, "layer_name": layer_name(k, n), "first_token_norm": first, "other_tokens_norm": rest,
            "first_to_other_ratio": first / rest if rest and np.isfinite(rest) else float("nan"),
            "max_abs_activation": a["max_abs"], "median_abs_activation": median,
            "max_to_median_ratio": a["max_abs"] / median if median > 0 else float("inf"),
            "top_dims": ",".join(str(int(d)) for d in top),
            "top_dim_share": float(dim_mean[top].sum() / dim_mean.sum()),
        })
    return pd.DataFrame(rows)


def massive_dims(report: pd.DataFrame, min_ratio: float = 100.0, max_dims: int = 8) -> list[int]:
    """Dimensions named among the top ones at layers whose max/median ratio exceeds ``min_ratio``."""
    counts: dict[int, int] = {}
    for _, row in report[report["max_to_median_ratio"] >= min_ratio].iterrows():
        for d in str(row["top_dims"]).split(","):
            if d:
                counts[int(d)] = counts.get(int(d), 0) + 1
    return [d for d, _ in sorted(counts.items(), key=lambda kv: -kv[1])][:max_dims]


def dominated_layers(report: pd.DataFrame, min_ratio: float = 5.0) -> list[int]:
    """Layers whose first token's norm is at least ``min_ratio`` times the other tokens'."""
    return [int(k) for k in report.loc[report["first_to_other_ratio"] >= min_ratio, "layer"]]


@dataclass
class ArtifactComparison:
    """The same scan three ways: as is, without the first token, without the massive dimensions."""

    report: pd.DataFrame
    dims: list[int]
    curves: pd.DataFrame  # set, layer, variant, metrics


def compare_without_artifacts(model, tokenizer, sets: dict[str, pd.DataFrame], pooling: str = "mean",
                              dims: Sequence[int] | None = None, sample: int = 200,
                              seed: int = 0) -> ArtifactComparison:
    words = []
    for df in sets.values():
        words += list(df["swahili"]) + list(df["english"])
    rng = np.random.default_rng(seed)
    pick = words if len(words) <= sample else [words[i] for i in rng.choice(len(words), sample, replace=False)]
    report = activation_report(model, tokenizer, pick)
    dims = list(dims) if dims is not None else massive_dims(report)
    variants = {"as is": dict(pooling=pooling), "first token left out": dict(pooling="mean_no_first")}
    if dims:
        variants[f"dims {','.join(map(str, dims))} left out"] = dict(pooling=pooling, drop_dims=dims)
    curves = []
    for name, kw in variants.items():
        res = scan(model, tokenizer, sets, seed=seed, **kw)
        curves.append(res.curve.assign(variant=name))
    return ArtifactComparison(report=report, dims=dims, curves=pd.concat(curves, ignore_index=True))
