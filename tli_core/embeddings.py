"""Word embeddings from every layer, for many words at once, in as few forwards as possible.

``embed(model, tokenizer, words)`` returns L2-normalised float32 vectors ``[layers x words x dim]``
for every hidden state (0 = input embeddings ... L = final output after the norm). Words are
*packed*: several short words share one row of the batch, each with its own positions starting
at 0 and a block-diagonal causal mask, so a word sees only itself -- the same computation as a
forward of the word alone -- and no compute is spent on padding. The default word pairs
(1,372 words, ~3,200 tokens) go through the model in one or two forwards. Each layer's states
are pooled on the device as the layer is produced; no stack of hidden states is kept.

The same hooks serve training with gradients (``pooled_hidden_states``); asked only for layers
up to k, the forward stops after decoder block k (early exit). Pooling modes are described
once, in ``POOLINGS``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .anatomy import decoder_parts, input_device, model_lock, num_layers
from .errors import TLIError
from .layers import resolve_layer
from .precision import analysis_precision
from .progress import Progress, no_progress

# The pooling modes: how a word's token states become one vector (one description, used by CLI and UI).
POOLINGS = {
    "mean": "mean over all attention-masked tokens, BOS included (the paper's)",
    "mean_words": "special tokens (BOS, EOS) stay in the input as context but are left out of the average "
                  "(the authors' evaluation script)",
    "mean_no_first": "the first token (BOS, or the first word piece where there is none) stays as context but is "
                     "left out of the average: the attention-sink position where massive activations live",
    "last": "the last attended token's state",
    "mean_sink": "a sink token stands before every word as context and is left out of the average, whatever the "
                 "tokenizer: its BOS where it adds one, else its BOS (or EOS) token placed there; the first "
                 "position's massive activations then sit on it, not on a word piece (the studio's default)",
}
SINK_POOLINGS = ("mean_sink",)  # poolings whose input has a sink token before every word
PHASE = "embedding"
# tokens per packed row: attention inside a row costs ~row length per token, so rows stay short. On the 2-core
# AMD machine (demo, 1,372 words in one forward), float32: 64 -> 5.1 s, 128 -> 5.3 s, 256 -> 6.1 s; bf16 2.7 / 2.7
# / 2.9 s. The GPU value is unmeasured (flash attention makes a row's length matter far less there).
ROW_TOKENS = {"cuda": 512, "cpu": 64}
# rows per forward, before the memory budget: enough to keep the matmuls efficient
TOKENS_PER_FORWARD = {"cuda": 65536, "cpu": 4096}


class _EarlyExit(Exception):
    """Raised from a hook once the deepest requested layer is captured."""


@dataclass
class EmbedStats:
    """What an embedding pass cost: forwards run, tokens forwarded (padding included), and the bytes of results
    handed to the host (a device->host copy on a GPU; counted the same on a CPU, where the copy is free, so the
    figure means the same on every machine)."""

    forwards: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    bytes_to_host: int = 0

    def add_host_copy(self, tensor: torch.Tensor) -> None:
        self.bytes_to_host += tensor.numel() * tensor.element_size()


@dataclass
class Embeddings:
    """Pooled, L2-normalised embeddings: ``vectors[i]`` is layer ``layers[i]``."""

    vectors: torch.Tensor  # [len(layers), n_words, dim], float32
    layers: list[int]
    words: list[str]
    num_layers: int  # decoder blocks L of the model (hidden states 0..L)
    pooling: str
    precision: str = "float32"
    stats: EmbedStats = field(default_factory=EmbedStats, repr=False)

    def at(self, layer: int) -> torch.Tensor:
        """Vectors of one layer, [n_words, dim]."""
        k = resolve_layer(layer, self.num_layers)
        if k not in self.layers:
            raise TLIError(f"layer {k} was not computed (have {self.layers[0]}..{self.layers[-1]})")
        return self.vectors[self.layers.index(k)]

    def part(self, start: int, stop: int) -> "Embeddings":
        """The words ``start:stop`` (a view, no copy)."""
        return Embeddings(self.vectors[:, start:stop], self.layers, self.words[start:stop], self.num_layers,
                          self.pooling, self.precision, self.stats)


# --------------------------------------------------------------------------- the forward

def run_layers(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, layers: Sequence[int],
               visit: Callable[[int, torch.Tensor], object],
               position_ids: torch.Tensor | None = None) -> dict[int, object]:
    """Run the decoder, call ``visit(k, hidden[batch, tokens, dim])`` at each requested layer.

    Returns ``{layer: what visit returned}``. The forward stops after the deepest requested
    layer (early exit): blocks beyond it never run, so layer k costs k blocks and gradients
    flow only into blocks 1..k. The model's lock is held from the first hook installed to the
    last one removed, so concurrent callers on a shared model never see each other's hooks.
    Call under ``torch.inference_mode()`` for analysis, or with grad enabled for training.
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

    with model_lock(model):
        handles = []
        try:
            if 0 in wanted:
                handles.append(blocks[0].register_forward_pre_hook(pre_first, with_kwargs=True))
            for k in wanted:
                if 0 < k < n:
                    handles.append(blocks[k - 1].register_forward_hook(after_block(k)))
            if n in wanted:
                handles.append(norm.register_forward_hook(after_block(n)))
            decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        except _EarlyExit:
            pass
        finally:
            for h in handles:
                h.remove()
    return out


_CAUSAL_MASKS: dict[tuple, torch.Tensor] = {}


def causal_mask(model, width: int, device) -> torch.Tensor | None:
    """A ready 4D causal mask [1, 1, width, width] for right-padded rows, in the form the model's attention
    implementation takes (sdpa: boolean, True = attend; eager: additive), or None for any other implementation.

    Right padding under causal attention needs no padding mask: a word's tokens never see the pads after
    them. Passing the library ``None`` would make it look for packed sequences, and a 2D mask would make
    it check for padding: both read device values on the host in every forward. A prepared 4D mask is
    used as it is. Cached per width and device (one small tensor each).
    """
    impl = getattr(model.config, "_attn_implementation", None)
    dtype = model.get_input_embeddings().weight.dtype
    key = (impl, width, str(device), dtype)
    if key not in _CAUSAL_MASKS:
        allowed = torch.ones((width, width), dtype=torch.bool, device=device).tril()
        if impl == "sdpa":
            mask = allowed
        elif impl == "eager":
            mask = torch.zeros((width, width), dtype=dtype, device=device).masked_fill(~allowed,
                                                                                        torch.finfo(dtype).min)
        else:
            return None
        _CAUSAL_MASKS[key] = mask[None, None]
    return _CAUSAL_MASKS[key]


def pool(hidden: torch.Tensor, pool_weights: torch.Tensor, drop_dims: Sequence[int] | None = None) -> torch.Tensor:
    """Weighted mean over tokens ([B,T,D] -> [B,D], float32), optional dimensions zeroed, L2-normalised."""
    w = pool_weights.to(device=hidden.device, dtype=torch.float32)
    v = torch.bmm(w.unsqueeze(1), hidden.float()).squeeze(1)  # no [B,T,D] product is materialised
    return _finish(v, drop_dims)


def _finish(v: torch.Tensor, drop_dims: Sequence[int] | None) -> torch.Tensor:
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


def tokenise(tokenizer, words: Sequence[str], sink: bool = False) -> Tokenised:
    """Tokenise single words/phrases the paper's way (tokenizer defaults: Llama-3 adds BOS).

    ``sink``: every word gets a leading special token (:func:`sink_token`) where the tokenizer did not put one."""
    enc = tokenizer(list(words), add_special_tokens=True, return_special_tokens_mask=True)
    ids, special = [list(x) for x in enc["input_ids"]], [list(x) for x in enc["special_tokens_mask"]]
    for w, x in zip(words, ids, strict=True):
        if not x:
            raise TLIError(f"the tokenizer produced no tokens for {w!r}")
    if sink:
        token, _, _ = sink_token(tokenizer)
        for i, flags in enumerate(special):
            if not flags[0]:
                ids[i], special[i] = [token] + ids[i], [1] + flags
    return Tokenised(ids, special)


def sink_token(tokenizer) -> tuple[int, str, bool]:
    """(id, text, whether the tokenizer adds it itself) of the token that leads every word under ``mean_sink``."""
    probe = tokenizer(["a"], add_special_tokens=True, return_special_tokens_mask=True)
    if probe["special_tokens_mask"][0] and probe["special_tokens_mask"][0][0]:
        first = probe["input_ids"][0][0]
        return first, tokenizer.convert_ids_to_tokens(first), True
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise TLIError("this tokenizer has neither a BOS nor an EOS token to stand before each word as the "
                       "attention sink; use the mean_words or mean_no_first pooling")
    return token, tokenizer.convert_ids_to_tokens(token), False


def sink_note(tokenizer) -> str:
    """What ``mean_sink`` did with this tokenizer, in words (recorded with every figure that uses it)."""
    token, text, own = sink_token(tokenizer)
    return (f"the tokenizer's own leading {text} (id {token}) is the sink" if own else
            f"{text} (id {token}) was placed before every word as the sink: this tokenizer adds no BOS")


def pool_weight_row(special: list[int], pooling: str) -> list[float]:
    """Averaging weights over one word's tokens (unpadded)."""
    n = len(special)
    if pooling == "mean":
        keep = [1.0] * n
    elif pooling in ("mean_words", "mean_sink"):
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
    """Right-padded (input_ids, attention_mask, pool_weights) for the words at ``idx``, one word per row."""
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


# --------------------------------------------------------------------------- packing words into rows

def pack_rows(lengths: Sequence[int], row_tokens: int) -> list[list[int]]:
    """Word indices packed into rows of at most ``row_tokens`` tokens (first fit, longest word first).

    A word longer than ``row_tokens`` gets a row of its own. Rows come out nearly full, so a
    forward over them wastes almost nothing on padding.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(max(row_tokens, n) - n)
    return rows


def group_rows(rows: list[list[int]], lengths: Sequence[int], max_tokens: int) -> list[list[list[int]]]:
    """Consecutive rows grouped into forwards of at most ``max_tokens`` padded tokens each."""
    forwards: list[list[list[int]]] = []
    current: list[list[int]] = []
    width = 0
    for row in rows:
        row_len = sum(lengths[i] for i in row)
        new_width = max(width, row_len)
        if current and new_width * (len(current) + 1) > max_tokens:
            forwards.append(current)
            current, new_width = [], row_len
        current.append(row)
        width = new_width
    if current:
        forwards.append(current)
    return forwards


@dataclass
class Packed:
    """One forward: packed rows, each word's position, and per pooling the (token, word, weight) triples."""

    input_ids: torch.Tensor  # [rows, width]
    position_ids: torch.Tensor  # [rows, width]: each word counts from 0; padding forms its own block
    words: list[int]  # the word indices in this forward, in output order
    tokens: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # pooling -> (flat token, local word, w)
    real_tokens: int

    @property
    def padded_tokens(self) -> int:
        return self.input_ids.numel()


def build_packed(tok: Tokenised, rows: list[list[int]], pad_id: int, poolings: Sequence[str],
                 device: torch.device) -> Packed:
    """The forward's tensors, built as flat Python lists and turned into tensors once (not word by word)."""
    width = max(sum(tok.lengths[i] for i in row) for row in rows)
    ids: list[int] = []
    pos: list[int] = []
    words: list[int] = []
    flat: dict[str, list[list]] = {p: [[], [], []] for p in poolings}
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            n = tok.lengths[i]
            ids += tok.input_ids[i]
            pos += range(n)
            local = len(words)
            words.append(i)
            for p in poolings:
                for t, w in enumerate(pool_weight_row(tok.special[i], p)):
                    if w:
                        flat[p][0].append(r * width + start + t)
                        flat[p][1].append(local)
                        flat[p][2].append(w)
            start += n
        ids += [pad_id] * (width - start)
        pos += range(width - start)  # padding: a block of its own that nobody attends to
    tokens = {p: (torch.as_tensor(a, device=device), torch.as_tensor(b, device=device),
                  torch.as_tensor(c, dtype=torch.float32, device=device)) for p, (a, b, c) in flat.items()}
    shape = (len(rows), width)
    return Packed(torch.as_tensor(ids, dtype=torch.long).view(shape).to(device),
                  torch.as_tensor(pos, dtype=torch.long).view(shape).to(device), words, tokens,
                  sum(tok.lengths[i] for i in words))


def pool_packed(hidden: torch.Tensor, packed: Packed, pooling: str,
                drop_dims: Sequence[int] | None = None) -> torch.Tensor:
    """[rows, width, dim] -> [words in this forward, dim], weighted over each word's own tokens, normalised."""
    index, word, weight = packed.tokens[pooling]
    flat = hidden.reshape(-1, hidden.shape[-1])
    index, word, weight = index.to(flat.device), word.to(flat.device), weight.to(flat.device)
    v = torch.zeros((len(packed.words), flat.shape[-1]), dtype=torch.float32, device=flat.device)
    v.index_add_(0, word, flat[index].float() * weight[:, None])
    return _finish(v, drop_dims)


# --------------------------------------------------------------------------- how much fits

def memory_budget(device: torch.device) -> int:
    """Bytes an embedding pass may use for activations: a share of what is free right now."""
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


def bytes_per_row(config, row_tokens: int, n_kept: int, act_bytes: int, words_per_row: float = 1.0) -> int:
    """Upper estimate of the peak memory one row of ``row_tokens`` tokens adds to a forward (no autograd).

    Inside one block at a time: residual, norm, attention in/out, q/k/v, MLP gate/up/act
    (``act_bytes`` each), fp32 attention scores over the row, the fp32 copy made for pooling,
    plus the pooled vectors kept for every requested layer.
    """
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    d, inter, heads = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads
    per_block = row_tokens * (8 * d + 3 * inter) * act_bytes + heads * row_tokens * row_tokens * 4
    pooling_copy = row_tokens * d * 4
    kept = int(2 * n_kept * d * 4 * words_per_row)
    return int(per_block + pooling_copy + kept)


def bytes_per_word(config, seq_len: int, n_kept: int, act_bytes: int) -> int:
    """The same estimate for a row holding one word of ``seq_len`` tokens."""
    return bytes_per_row(config, seq_len, n_kept, act_bytes)


def rows_per_forward(model, row_tokens: int, n_kept: int, words_per_row: float, budget: int | None = None) -> int:
    """How many rows of ``row_tokens`` tokens one forward may hold within the memory budget."""
    device = input_device(model)
    budget = memory_budget(device) if budget is None else budget
    act_bytes = max(model.get_input_embeddings().weight.element_size(), 4)  # analysis may run in float32
    per_row = bytes_per_row(model.config, row_tokens, n_kept, act_bytes, words_per_row)
    return int(max(1, budget // per_row))


def choose_batch_size(model, seq_len: int, n_kept: int, budget: int | None = None, cap: int | None = None) -> int:
    """Largest number of one-word rows of ``seq_len`` tokens whose estimated peak fits ``budget`` bytes."""
    n = rows_per_forward(model, seq_len, n_kept, 1.0, budget)
    return int(max(1, min(cap or 1024, n)))


def plan(tok: Tokenised, model, n_kept: int, row_tokens: int | None = None, batch_size: int | None = None,
         max_tokens: int | None = None, budget: int | None = None) -> list[list[list[int]]]:
    """Forwards (lists of rows, rows lists of word indices) for every word, within the memory budget.

    The cost model behind it: a forward costs a fixed overhead (launching every block's kernels; about
    24 ms for an 8B NF4 model on an H100, measured, whatever the batch) plus a cost per forwarded token,
    plus attention, quadratic in a row's length. Packing words into rows makes the padding nearly nil
    (3 % on the default pairs), so the number of forwards is the only lever left: as few as the memory
    estimate allows (one for the default pairs on a GPU and on a CPU), with rows capped at
    ``ROW_TOKENS`` so the quadratic term stays a small share of the work.

    ``batch_size`` (words per forward) keeps the old meaning for callers that want small forwards.
    """
    device = input_device(model)
    kind = "cuda" if device.type == "cuda" else "cpu"
    row_tokens = row_tokens or ROW_TOKENS[kind]
    if max_tokens:  # after an out-of-memory: rows no longer than the forward may be
        row_tokens = min(row_tokens, max_tokens)
    row_tokens = max(row_tokens, max(tok.lengths))
    rows = pack_rows(tok.lengths, row_tokens)
    if batch_size:  # at most batch_size words per forward: rows of at most that many words
        rows = [row[i:i + batch_size] for row in rows for i in range(0, len(row), batch_size)]
        forwards: list[list[list[int]]] = []
        current: list[list[int]] = []
        for row in rows:
            if current and sum(map(len, current)) + len(row) > batch_size:
                forwards.append(current)
                current = []
            current.append(row)
        return forwards + ([current] if current else [])
    words_per_row = len(tok.lengths) / len(rows)
    fit = rows_per_forward(model, row_tokens, n_kept, words_per_row, budget) * row_tokens
    limit = min(max_tokens or TOKENS_PER_FORWARD[kind], fit)
    return group_rows(rows, tok.lengths, max(limit, row_tokens))


# --------------------------------------------------------------------------- public entry

def embed_poolings(model, tokenizer, words: Sequence[str], poolings: Sequence[str],
                   layers: Sequence[int] | None = None, precision: str = "float32", batch_size: int | None = None,
                   row_tokens: int | None = None, progress: Progress = no_progress,
                   drop_dims: Sequence[int] | None = None, out_device: str | torch.device | None = "cpu",
                   ) -> dict[str, Embeddings]:
    """Embeddings of ``words`` at ``layers`` (default: all, 0..L) under several poolings, from the same forwards.

    ``precision`` is the analysis arithmetic (see ``precision.py``; default float32 on the
    model's own weights). ``out_device`` is where the vectors are gathered (None: the model's
    device, for statistics computed there). On CUDA a forward that runs out of memory is split.
    """
    for p in poolings:
        if p not in POOLINGS:
            raise TLIError(f"unknown pooling {p!r}; use one of {', '.join(POOLINGS)}")
    words = list(words)
    if not words:
        raise TLIError("no words to embed")
    sinks = [p for p in poolings if p in SINK_POOLINGS]
    plain = [p for p in poolings if p not in SINK_POOLINGS]
    if sinks and plain and not sink_token(tokenizer)[2]:  # other inputs: the sink poolings get a forward of their own
        args = dict(layers=layers, precision=precision, batch_size=batch_size, row_tokens=row_tokens,
                    progress=progress, drop_dims=drop_dims, out_device=out_device)
        out = embed_poolings(model, tokenizer, words, plain, **args)
        with_sink = embed_poolings(model, tokenizer, words, sinks, **args)
        stats = next(iter(out.values())).stats
        extra = next(iter(with_sink.values())).stats
        for key in ("forwards", "tokens", "padded_tokens", "bytes_to_host"):
            setattr(stats, key, getattr(stats, key) + getattr(extra, key))
        for emb in with_sink.values():
            emb.stats = stats
        return {p: (with_sink if p in SINK_POOLINGS else out)[p] for p in poolings}
    n_layers = num_layers(model)
    layers = list(range(n_layers + 1)) if layers is None else sorted({resolve_layer(k, n_layers) for k in layers})
    tok = tokenise(tokenizer, words, sink=bool(sinks))
    device = input_device(model)
    to_host = out_device is not None and torch.device(out_device).type == "cpu"  # the caller asked for host vectors
    out_device = device if out_device is None else torch.device(out_device)
    dim = model.get_input_embeddings().weight.shape[1]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    stats = EmbedStats()
    results = {p: torch.empty((len(layers), len(words), dim), dtype=torch.float32, device=out_device)
               for p in poolings}
    max_tokens = None  # after a CUDA out-of-memory: half the tokens of the forward that failed
    queue = plan(tok, model, len(layers) * len(poolings), row_tokens, batch_size)
    done = 0
    with analysis_precision(model, precision), torch.inference_mode():
        while queue:
            rows = queue.pop(0)
            packed = build_packed(tok, rows, pad_id, poolings, device)
            try:
                vecs = run_layers(model, packed.input_ids, None, layers,
                                  lambda k, h, packed=packed: {p: pool_packed(h, packed, p, drop_dims)
                                                               for p in poolings},
                                  position_ids=packed.position_ids)
            except torch.cuda.OutOfMemoryError:
                if sum(map(len, rows)) == 1:
                    raise TLIError("out of GPU memory even for a single word") from None
                torch.cuda.empty_cache()
                max_tokens = max(1, packed.padded_tokens // 2)
                remaining = [i for row in rows for i in row] + [i for fwd in queue for row in fwd for i in row]
                sub = Tokenised([tok.input_ids[i] for i in remaining], [tok.special[i] for i in remaining])
                queue = [[[remaining[j] for j in row] for row in fwd]
                         for fwd in plan(sub, model, len(layers) * len(poolings), row_tokens, batch_size, max_tokens)]
                continue
            stats.forwards += 1
            stats.tokens += packed.real_tokens
            stats.padded_tokens += packed.padded_tokens
            index = torch.as_tensor(packed.words, device=out_device)
            for p in poolings:
                # with device_map="auto" the blocks (and so the vectors) may sit on several GPUs
                block = torch.stack([vecs[k][p].to(out_device) for k in layers])
                results[p].index_copy_(1, index, block)
            done += len(packed.words)
            progress(PHASE, done, len(words))
    if to_host:
        for r in results.values():
            stats.add_host_copy(r)
    return {p: Embeddings(vectors=results[p], layers=layers, words=words, num_layers=n_layers, pooling=p,
                          precision=precision, stats=stats) for p in poolings}


def embed(model, tokenizer, words: Sequence[str], layers: Sequence[int] | None = None,
          pooling: str = "mean", batch_size: int | None = None, progress: Progress = no_progress,
          drop_dims: Sequence[int] | None = None, out_device: str | torch.device | None = "cpu",
          precision: str = "float32", row_tokens: int | None = None) -> Embeddings:
    """Embeddings of ``words`` at ``layers`` (default: all, 0..L) under one pooling (see ``embed_poolings``)."""
    return embed_poolings(model, tokenizer, words, [pooling], layers, precision, batch_size, row_tokens, progress,
                          drop_dims, out_device)[pooling]

