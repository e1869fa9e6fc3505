"""Word embeddings from every layer in one batched forward pass.

``embed(model, tokenizer, words)`` returns L2-normalised float32 vectors
``[layers x words x dim]`` for every hidden state (0 = input embeddings ... L = final output
after the norm), pooled on the device as each layer is produced, so no stack of full hidden
states is ever kept. The same forward (``pooled_hidden_states``) serves training with
gradients; asked only for layers up to k, it stops after decoder block k (early exit).

Pooling modes are described once, in ``POOLINGS``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .anatomy import decoder_parts, input_device, model_lock, num_layers
from .errors import TLIError
from .layers import resolve_layer
from .progress import Progress, no_progress

# The pooling modes: how a word's token states become one vector (one description, used by CLI and UI).
POOLINGS = {
    "mean": "mean over all attention-masked tokens, BOS included (the paper's)",
    "mean_words": "special tokens (BOS, EOS) stay in the input as context but are left out of the average "
                  "(the authors' evaluation script)",
    "mean_no_first": "the first token (BOS, or the first word piece where there is none) stays as context but is "
                     "left out of the average: the attention-sink position where massive activations live",
    "last": "the last attended token's state",
}
PHASE = "embedding"


class _EarlyExit(Exception):
    """Raised from a hook once the deepest requested layer is captured."""


@dataclass
class Embeddings:
    """Pooled, L2-normalised embeddings: ``vectors[i]`` is layer ``layers[i]``."""

    vectors: torch.Tensor  # [len(layers), n_words, dim], float32
    layers: list[int]
    words: list[str]
    num_layers: int  # decoder blocks L of the model (hidden states 0..L)
    pooling: str

    def at(self, layer: int) -> torch.Tensor:
        """Vectors of one layer, [n_words, dim]."""
        k = resolve_layer(layer, self.num_layers)
        if k not in self.layers:
            raise TLIError(f"layer {k} was not computed (have {self.layers[0]}..{self.layers[-1]})")
        return self.vectors[self.layers.index(k)]


# --------------------------------------------------------------------------- the forward

def run_layers(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: Sequence[int],
               visit: Callable[[int, torch.Tensor], object]) -> dict[int, object]:
    """Run the decoder, call ``visit(k, hidden[batch, tokens, dim])`` at each requested layer.

    Returns ``{layer: what visit returned}``. The forward stops after the deepest requested
    layer (early exit): blocks beyond it never run, so layer k costs k blocks and gradients
    flow only into blocks 1..k. Call under ``torch.inference_mode()`` for analysis, or with
    grad enabled for training.
    """
    decoder, blocks, norm = decoder_parts(model)
    n = len(blocks)
    wanted = sorted({resolve_layer(k, n) for k in layers})
    deepest = wanted[-1]
    out: dict[int, object] = {}

    def capture(k: int, hidden: torch.Tensor) -> None:
        out[k] = visit(k, hidden)
        if k == deepest and deepest < n:
            raise _EarlyExit

    def pre_first(module, args, kwargs):
        capture(0, args[0] if args else kwargs["hidden_states"])

    def after_block(k):
        def hook(module, args, output):
            capture(k, output[0] if isinstance(output, tuple) else output)
        return hook

    handles = []
    if 0 in wanted:
        handles.append(blocks[0].register_forward_pre_hook(pre_first, with_kwargs=True))
    for k in wanted:
        if 0 < k < n:
            handles.append(blocks[k - 1].register_forward_hook(after_block(k)))
    if n in wanted:
        handles.append(norm.register_forward_hook(after_block(n)))
    try:
        with model_lock(model):
            decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _EarlyExit:
        pass
    finally:
        for h in handles:
            h.remove()
    return out


def pool(hidden: torch.Tensor, pool_weights: torch.Tensor, drop_dims: Sequence[int] | None = None) -> torch.Tensor:
    """Weighted mean over tokens ([B,T,D] -> [B,D], float32), optional dimensions zeroed, L2-normalised."""
    w = pool_weights.to(device=hidden.device, dtype=torch.float32)
    v = torch.bmm(w.unsqueeze(1), hidden.float()).squeeze(1)  # no [B,T,D] product is materialised
    if drop_dims:
        v = v.index_fill(1, torch.as_tensor(list(drop_dims), device=v.device), 0.0)
    return F.normalize(v, dim=-1)


def pooled_hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         pool_weights: torch.Tensor, layers: Sequence[int],
                         drop_dims: Sequence[int] | None = None) -> dict[int, torch.Tensor]:
    """``{layer: [batch, dim] L2-normalised float32}``, pooled as each layer is produced.

    ``pool_weights`` is [batch, tokens]: each row sums to 1 over the tokens to average.
    """
    return run_layers(model, input_ids, attention_mask, layers,
                      lambda k, hidden: pool(hidden, pool_weights, drop_dims))


# --------------------------------------------------------------------------- tokenising

@dataclass
class Tokenised:
    input_ids: list[list[int]]
    special: list[list[int]]  # 1 where the token is special (BOS, EOS ...)

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.input_ids]


def tokenise(tokenizer, words: Sequence[str]) -> Tokenised:
    """Tokenise single words/phrases the paper's way (tokenizer defaults: Llama-3 adds BOS)."""
    enc = tokenizer(list(words), add_special_tokens=True, return_special_tokens_mask=True)
    ids, special = enc["input_ids"], enc["special_tokens_mask"]
    for w, x in zip(words, ids, strict=True):
        if not x:
            raise TLIError(f"the tokenizer produced no tokens for {w!r}")
    return Tokenised(ids, special)


def pool_weight_row(special: list[int], pooling: str) -> list[float]:
    """Averaging weights over one word's tokens (unpadded)."""
    n = len(special)
    if pooling == "mean":
        keep = [1.0] * n
    elif pooling == "mean_words":
        keep = [0.0 if s else 1.0 for s in special]
        if not any(keep):  # a word made only of special tokens: fall back to all
            keep = [1.0] * n
    elif pooling == "mean_no_first":
        keep = [0.0] + [1.0] * (n - 1) if n > 1 else [1.0]
    elif pooling == "last":
        keep = [0.0] * (n - 1) + [1.0]
    else:
        raise TLIError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
    total = sum(keep)
    return [k / total for k in keep]


def make_batch(tok: Tokenised, idx: Sequence[int], pad_id: int, pooling: str,
               device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, pool_weights) for the words at ``idx``."""
    width = max(tok.lengths[i] for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    weights = torch.zeros((len(idx), width), dtype=torch.float32)
    for row, i in enumerate(idx):
        n = tok.lengths[i]
        ids[row, :n] = torch.as_tensor(tok.input_ids[i])
        mask[row, :n] = 1
        weights[row, :n] = torch.as_tensor(pool_weight_row(tok.special[i], pooling))
    return ids.to(device), mask.to(device), weights.to(device)


# --------------------------------------------------------------------------- batch size

def memory_budget(device: torch.device) -> int:
    """Bytes the scan may use for activations: a share of what is free right now."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.6)
    avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(avail * 0.25)


def bytes_per_word(config, seq_len: int, n_kept: int, act_bytes: int) -> int:
    """Upper estimate of the peak memory one word adds to a batched forward (no autograd).

    Inside one block at a time: residual, norm, attention in/out, q/k/v, MLP gate/up/act
    (``act_bytes`` each), fp32 attention scores, the fp32 copy made for pooling, plus the
    pooled vectors kept for every requested layer.
    """
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    d, inter = cfg.hidden_size, cfg.intermediate_size
    heads = cfg.num_attention_heads
    per_block = seq_len * (8 * d + 3 * inter) * act_bytes + heads * seq_len * seq_len * 4
    pooling_copy = seq_len * d * 4
    kept = 2 * n_kept * d * 4
    return int(per_block + pooling_copy + kept)


def choose_batch_size(model, seq_len: int, n_kept: int, budget: int | None = None,
                      cap: int | None = None) -> int:
    """Largest batch whose estimated peak (``bytes_per_word``) fits ``budget`` bytes."""
    device = input_device(model)
    budget = memory_budget(device) if budget is None else budget
    act_bytes = model.get_input_embeddings().weight.element_size()
    act_bytes = max(act_bytes, 2)
    per_word = bytes_per_word(model.config, seq_len, n_kept, act_bytes)
    cap = cap or (1024 if device.type == "cuda" else 256)
    return int(max(1, min(cap, budget // per_word)))


# rows (words x tokens) per forward: enough to keep the matmuls efficient, and the chooser's
# memory budget still applies on top
TOKEN_CAP = {"cuda": 16384, "cpu": 2048}
MIN_FILL = 16  # a batch this full is closed rather than padded for a shorter word


def plan_batches(lengths: Sequence[int], capacity: Callable[[int], int], min_fill: int = MIN_FILL) -> list[list[int]]:
    """Split word indices into batches, longest first, with little or no padding.

    Words are taken in order of decreasing token length (stable); a batch closes when it
    holds ``capacity(its longest length)`` words, or when the next word is shorter and either
    the batch already holds ``min_fill`` words or the word would be more than half padding.
    Single words are mostly 1-6 tokens, so batches come out as padding-free buckets of one
    length; a count-based split of the sorted list pads ~45% extra tokens on the default pairs.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current:
            top = lengths[current[0]]
            shorter = lengths[i] < top
            if len(current) >= capacity(top) or (shorter and (len(current) >= min_fill or 2 * lengths[i] < top)):
                batches.append(current)
                current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


# --------------------------------------------------------------------------- public entry

def embed(model, tokenizer, words: Sequence[str], layers: Sequence[int] | None = None,
          pooling: str = "mean", batch_size: int | None = None, progress: Progress = no_progress,
          drop_dims: Sequence[int] | None = None, out_device: str = "cpu") -> Embeddings:
    """Embeddings of ``words`` at ``layers`` (default: all, 0..L) from one pass per batch.

    Words are grouped by token length so batches carry little or no padding
    (``plan_batches``); results come back in the input order. ``batch_size`` caps the words
    per batch; by default it is chosen per length from free memory. Under inference mode; on
    CUDA a batch that runs out of memory is split in two.
    """
    if pooling not in POOLINGS:
        raise TLIError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
    words = list(words)
    if not words:
        raise TLIError("no words to embed")
    n_layers = num_layers(model)
    layers = list(range(n_layers + 1)) if layers is None else sorted({resolve_layer(k, n_layers) for k in layers})
    tok = tokenise(tokenizer, words)
    device = input_device(model)
    dim = model.get_input_embeddings().weight.shape[1]
    if batch_size:
        capacity = lambda length: batch_size  # noqa: E731
    else:
        token_cap = TOKEN_CAP["cuda" if device.type == "cuda" else "cpu"]
        capacity = functools.lru_cache(maxsize=None)(
            lambda length: choose_batch_size(model, length, len(layers), cap=max(1, token_cap // length)))
    max_tokens = None  # after a CUDA out-of-memory: half the padded tokens of the batch that failed

    def plan(indices: list[int]) -> list[list[int]]:
        fits = capacity if max_tokens is None else lambda n: max(1, min(capacity(n), max_tokens // n))
        sub = plan_batches([tok.lengths[i] for i in indices], fits)
        return [[indices[j] for j in batch] for batch in sub]

    queue = plan(list(range(len(words))))
    result = torch.empty((len(layers), len(words), dim), dtype=torch.float32, device=out_device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    done = 0
    with torch.inference_mode():
        while queue:
            idx = queue.pop(0)
            ids, mask, weights = make_batch(tok, idx, pad_id, pooling, device)
            try:
                vecs = pooled_hidden_states(model, ids, mask, weights, layers, drop_dims)
            except torch.cuda.OutOfMemoryError:
                if len(idx) == 1:
                    raise TLIError("out of GPU memory even for a single word") from None
                torch.cuda.empty_cache()
                max_tokens = len(idx) * max(tok.lengths[i] for i in idx) // 2
                queue = plan(idx + [i for batch in queue for i in batch])
                continue
            # with device_map="auto" the blocks (and so the vectors) may sit on several GPUs
            result[:, idx] = torch.stack([vecs[k].to(out_device) for k in layers])
            done += len(idx)
            progress(PHASE, done, len(words))
    return Embeddings(vectors=result, layers=layers, words=words, num_layers=n_layers, pooling=pooling)
