"""2-D maps of word embeddings: PCA and exact t-SNE (van der Maaten & Hinton, 2008), in torch.

Before and after a run are projected *jointly* so that their maps share axes (PCA) or one
optimisation (t-SNE), and translation pairs can be joined by lines.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .embeddings import embed
from .errors import TLIError
from .trained import trained_model

METHODS = ("pca", "tsne")


def pca_2d(x: np.ndarray) -> np.ndarray:
    """Top-2 principal components (sign fixed so the largest loading is positive)."""
    x = np.asarray(x, dtype=np.float64)
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    comps = vt[:2]
    signs = np.sign(comps[np.arange(2), np.abs(comps).argmax(1)])
    return centred @ (comps * signs[:, None]).T


def _conditional_p(dist2: torch.Tensor, perplexity: float, tol: float = 1e-5, steps: int = 60) -> torch.Tensor:
    """Row-wise Gaussian affinities whose entropy matches log(perplexity) (binary search on beta)."""
    n = dist2.shape[0]
    target = np.log(perplexity)
    beta = torch.ones(n, 1, dtype=dist2.dtype)
    lo = torch.full((n, 1), 0.0, dtype=dist2.dtype)
    hi = torch.full((n, 1), float("inf"), dtype=dist2.dtype)
    eye = torch.eye(n, dtype=torch.bool)
    for _ in range(steps):
        logits = (-dist2 * beta).masked_fill(eye, float("-inf"))
        p = torch.softmax(logits, dim=1)
        entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(1, keepdim=True)
        too_flat = entropy > target  # entropy too high: sharpen (larger beta)
        lo = torch.where(too_flat, beta, lo)
        hi = torch.where(too_flat, hi, beta)
        beta = torch.where(torch.isinf(hi), beta * 2, (lo + hi) / 2)
        if (entropy - target).abs().max() < tol:
            break
    return p


def tsne_2d(x: np.ndarray, perplexity: float = 30.0, iterations: int = 750, seed: int = 0) -> np.ndarray:
    """Exact t-SNE: O(n^2) memory, fine for the few thousand words a pair set has."""
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    n = x.shape[0]
    if n < 5:
        raise TLIError("t-SNE needs at least 5 points")
    perplexity = min(perplexity, (n - 1) / 3)
    dist2 = torch.cdist(x, x).pow(2)
    p = _conditional_p(dist2 / dist2[dist2 > 0].median(), perplexity)
    p = (p + p.T) / (2 * n)
    p = p.clamp_min(1e-12)
    gen = torch.Generator().manual_seed(seed)
    y = torch.randn(n, 2, generator=gen, dtype=torch.float64) * 1e-4
    velocity = torch.zeros_like(y)
    gains = torch.ones_like(y)
    lr = max(n / 12.0, 50.0)
    eye = torch.eye(n, dtype=torch.bool)
    for it in range(iterations):
        exaggeration = 12.0 if it < 250 else 1.0
        num = 1.0 / (1.0 + torch.cdist(y, y).pow(2))
        num = num.masked_fill(eye, 0.0)
        q = (num / num.sum()).clamp_min(1e-12)
        w = (exaggeration * p - q) * num
        grad = 4.0 * (torch.diag(w.sum(1)) - w) @ y
        same = torch.sign(grad) == torch.sign(velocity)
        gains = torch.where(same, gains * 0.8, gains + 0.2).clamp_min(0.01)
        momentum = 0.5 if it < 250 else 0.8
        velocity = momentum * velocity - lr * gains * grad
        y = y + velocity
        y = y - y.mean(0)
    return y.numpy()


def project(x: np.ndarray, method: str = "pca", seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    if method == "pca":
        return pca_2d(x)
    if method == "tsne":
        return tsne_2d(x, perplexity=perplexity, seed=seed)
    raise TLIError(f"unknown projection {method!r}; use one of {', '.join(METHODS)}")


def map_points(model, tokenizer, sets: dict, layer: int, pooling: str = "mean", weights_dir=None,
               method: str = "pca", max_pairs: int | None = 150, seed: int = 0):
    """Points of the embedding map: every word of a (sampled) pair set at ``layer``, before and,
    with a run's trained weights, after; projected jointly. Returns a DataFrame with phase, language,
    set, pair, word, partner, x, y."""
    rows, words = [], []
    rng = np.random.default_rng(seed)
    for name, df in sets.items():
        if max_pairs and len(df) > max_pairs:
            df = df.iloc[np.sort(rng.choice(len(df), max_pairs, replace=False))]
        for i, (sw, en) in enumerate(zip(df["swahili"], df["english"], strict=True)):
            pair = f"{name}:{i}"
            rows += [{"language": "swahili", "set": name, "pair": pair, "word": sw, "partner": en},
                     {"language": "english", "set": name, "pair": pair, "word": en, "partner": sw}]
            words += [sw, en]
    base = pd.DataFrame(rows)
    vectors = [embed(model, tokenizer, words, layers=[layer], pooling=pooling).at(layer).numpy()]
    phases = ["before"]
    if weights_dir is not None:
        with trained_model(model, weights_dir) as tuned:
            vectors.append(embed(tuned, tokenizer, words, layers=[layer], pooling=pooling).at(layer).numpy())
        phases.append("after")
    xy = project(np.concatenate(vectors), method=method, seed=seed)
    out = []
    for i, phase in enumerate(phases):
        part = xy[i * len(words):(i + 1) * len(words)]
        out.append(base.assign(phase=phase, x=part[:, 0], y=part[:, 1]))
    return pd.concat(out, ignore_index=True)
