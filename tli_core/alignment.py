"""Layer-by-layer Swahili–English alignment, with the evidence needed to trust it.

For each layer: the mean/std cosine of true translation pairs, the same for shuffled pairs
(a fixed-seed derangement of the English side), their gap, and retrieval precision@k over
the pair pool by nearest neighbour and by CSLS (k=10), next to the chance level. A high
cosine alone is not alignment: massive shared activations push every pair, shuffled or not,
towards 1; only the gap and retrieval tell the two apart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .embeddings import Embeddings, embed
from .errors import TLIError
from .layers import layer_name
from .progress import Progress, no_progress

CENTERING = ("none", "joint", "language")
CSLS_K = 10
PRECISION_KS = (1, 5)


def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A permutation with no fixed point (Sattolo's algorithm: one random n-cycle), seeded."""
    if n < 2:
        raise TLIError("a shuffled baseline needs at least 2 pairs")
    rng = np.random.default_rng(seed)
    perm = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))  # j < i: this is what makes it a single cycle
        perm[i], perm[j] = perm[j], perm[i]
    return perm


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


def retrieval_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Rank of the true target (the diagonal) in each row: how many others score at least as high.

    Ties count against the query, so identical vectors can never look like a hit.
    """
    true = scores.diagonal().unsqueeze(1)
    ahead = (scores >= true).sum(1) - 1  # minus the diagonal itself
    return ahead


def csls_scores(sims: torch.Tensor, k: int = CSLS_K) -> torch.Tensor:
    """CSLS (Conneau et al. 2018): 2 cos(x, y) - r_T(x) - r_S(y), mean over k nearest neighbours."""
    k = min(k, sims.shape[1], sims.shape[0])
    r_src = sims.topk(k, dim=1).values.mean(1, keepdim=True)  # each source's neighbourhood in targets
    r_tgt = sims.topk(k, dim=0).values.mean(0, keepdim=True)  # each target's neighbourhood in sources
    return 2 * sims - r_src - r_tgt


def layer_metrics(src: torch.Tensor, tgt: torch.Tensor, perm: np.ndarray,
                  centering: str = "none") -> dict:
    """All alignment numbers for one layer; rows of src and tgt are translations of each other."""
    src, tgt = center(src.float(), tgt.float(), centering)
    n = src.shape[0]
    true = (src * tgt).sum(1)
    shuffled = (src * tgt[torch.as_tensor(perm)]).sum(1)
    sims = src @ tgt.T
    nn_rank = retrieval_ranks(sims)
    csls_rank = retrieval_ranks(csls_scores(sims))
    row = {
        "n": n,
        "true_mean": true.mean().item(), "true_std": true.std().item() if n > 1 else 0.0,
        "shuffled_mean": shuffled.mean().item(), "shuffled_std": shuffled.std().item() if n > 1 else 0.0,
    }
    row["gap"] = row["true_mean"] - row["shuffled_mean"]
    for k in PRECISION_KS:
        row[f"p{k}_nn"] = (nn_rank < k).float().mean().item()
        row[f"p{k}_csls"] = (csls_rank < k).float().mean().item()
        row[f"chance_p{k}"] = min(k, n) / n
    return row


def curve(src: Embeddings, tgt: Embeddings, centering: str = "none", seed: int = 0,
          set_name: str = "trained") -> pd.DataFrame:
    """One row per layer: true-pair cosine, shuffled baseline, gap, P@k (NN and CSLS), chance."""
    if src.layers != tgt.layers or len(src.words) != len(tgt.words):
        raise TLIError("source and target embeddings must cover the same layers and number of pairs")
    perm = derangement(len(src.words), seed)
    rows = []
    for i, k in enumerate(src.layers):
        row = {"set": set_name, "layer": k, "layer_name": layer_name(k, src.num_layers)}
        row.update(layer_metrics(src.vectors[i], tgt.vectors[i], perm, centering))
        rows.append(row)
    return pd.DataFrame(rows)


def pair_cosines(src: Embeddings, tgt: Embeddings, centering: str = "none") -> np.ndarray:
    """[n_pairs, n_layers] cosine of each translation pair at each computed layer."""
    cols = []
    for s, t in zip(src.vectors, tgt.vectors, strict=True):
        s, t = center(s.float(), t.float(), centering)
        cols.append((s * t).sum(-1))
    return torch.stack(cols, 1).cpu().numpy()


def pair_table(pairs: pd.DataFrame, src: Embeddings, tgt: Embeddings, set_name: str,
               centering: str = "none") -> pd.DataFrame:
    """Per pair: its words, its set, and its cosine at every computed layer (``layer_<k>``)."""
    cos = pair_cosines(src, tgt, centering)
    table = pd.DataFrame({"swahili": pairs["swahili"].to_numpy(), "english": pairs["english"].to_numpy(),
                          "set": set_name})
    layer_cols = pd.DataFrame(cos, columns=[f"layer_{k}" for k in src.layers])
    return pd.concat([table, layer_cols], axis=1)


def suggest_layers(curve_df: pd.DataFrame, set_name: str = "trained") -> dict:
    """Where to inject: the raw-cosine peak (the paper's rule) next to the gap and retrieval peaks."""
    df = curve_df[curve_df["set"] == set_name]
    if df.empty:
        raise TLIError(f"no curve rows for set {set_name!r}")
    inner = df[df["layer"] > 0]  # layer 0 is the embedding table, not something LoRA can train
    inner = inner if not inner.empty else df

    def best(col):
        return int(inner.loc[inner[col].idxmax(), "layer"])

    return {"raw_peak": best("true_mean"), "gap_peak": best("gap"), "retrieval_peak": best("p1_csls")}


def indistinguishable_layers(curve_df: pd.DataFrame, min_gap: float = 0.02,
                             set_name: str = "trained") -> list[int]:
    """Layers where true and shuffled pairs are about as similar (a warning for the user)."""
    df = curve_df[curve_df["set"] == set_name]
    return [int(k) for k in df.loc[df["gap"].abs() < min_gap, "layer"]]


@dataclass
class ScanResult:
    curve: pd.DataFrame  # one row per (set, layer)
    pairs: pd.DataFrame  # one row per pair, layer_<k> columns
    num_layers: int
    pooling: str
    centering: str
    seconds: float = 0.0
    embeddings: dict[str, tuple[Embeddings, Embeddings]] = field(default_factory=dict, repr=False)


def scan(model, tokenizer, sets: dict[str, pd.DataFrame], pooling: str = "mean", centering: str = "none",
         layers: Sequence[int] | None = None, seed: int = 0, batch_size: int | None = None,
         progress: Progress = no_progress, keep_embeddings: bool = False,
         drop_dims: Sequence[int] | None = None) -> ScanResult:
    """The layer scan ("pilot"): embed every word of every set once, all layers, and score them.

    ``sets`` maps a set name (``trained``, ``control``) to its pair frame. All words go through
    the model in one batched pass, then each set is scored on its own pool.
    """
    if centering not in CENTERING:
        raise TLIError(f"unknown centering {centering!r}; use one of {', '.join(CENTERING)}")
    start = time.perf_counter()
    names = [n for n, df in sets.items() if df is not None and len(df)]
    if not names:
        raise TLIError("no word pairs to scan")
    words: list[str] = []
    spans = {}
    for name in names:
        df = sets[name]
        spans[name] = (len(words), len(df))
        words += list(df["swahili"]) + list(df["english"])
    emb = embed(model, tokenizer, words, layers=layers, pooling=pooling, batch_size=batch_size,
                progress=progress, drop_dims=drop_dims)
    curves, tables, kept = [], [], {}
    for name in names:
        offset, n = spans[name]

        def part(a, b):
            return Embeddings(emb.vectors[:, a:b], emb.layers, words[a:b], emb.num_layers, pooling)

        src, tgt = part(offset, offset + n), part(offset + n, offset + 2 * n)
        curves.append(curve(src, tgt, centering, seed, name))
        tables.append(pair_table(sets[name], src, tgt, name, centering))
        if keep_embeddings:
            kept[name] = (src, tgt)
    return ScanResult(curve=pd.concat(curves, ignore_index=True), pairs=pd.concat(tables, ignore_index=True),
                      num_layers=emb.num_layers, pooling=pooling, centering=centering,
                      seconds=time.perf_counter() - start, embeddings=kept)
