"""Targeted Lexical Injection: the method, as the paper's section reads.

LoRA adapters (r=16, alpha=32, dropout 0.05 on q_proj and v_proj of every block) are trained
with a triplet loss on L2-normalised word embeddings taken from an early layer (layer 2):
for each Swahili anchor, the positive is its English translation and the negative the
hardest other English word in the batch; loss = relu(margin + sim_neg - sim_pos), margin 0.4.
AdamW, lr 2e-4, linear schedule with 50 warm-up steps, batch 8, 5 epochs.

Because ``hidden_states[k]`` depends only on blocks 1..k, the forward stops after block k
(early exit) and only adapters in those blocks can learn; every other adapter stays at its
initial value (LoRA's B = 0, i.e. no change). The tool reports both facts with each run.
"""

from __future__ import annotations

import contextlib
import math
import random
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .alignment import PairIndex, pair_index
from .config import Resolved, TLIConfig, total_steps
from .embeddings import SINK_POOLINGS, Tokenised, causal_mask, make_batch, pooled_hidden_states, tokenise
from .errors import TLIError
from .fullft import FullBlocks
from .jobs.stopping import Stopped

# --------------------------------------------------------------------------- losses

def batch_similarities(src: torch.Tensor, tgt: torch.Tensor, same_target: torch.Tensor | None = None):
    """Cosine matrix [B, B] and the mask of valid negatives (not the diagonal, not a synonym target)."""
    sims = src @ tgt.T
    neg_ok = ~torch.eye(len(src), dtype=torch.bool, device=src.device)
    if same_target is not None:
        neg_ok &= ~same_target.to(src.device)
    return sims, neg_ok


def _hardest_negative(sims: torch.Tensor, neg_ok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per anchor: the most similar valid negative (0 where there is none) and whether there is one."""
    neg = sims.masked_fill(~neg_ok, float("-inf")).max(dim=1).values
    has_neg = neg_ok.any(dim=1)
    return torch.where(has_neg, neg, torch.zeros_like(neg)), has_neg


def triplet_loss(src: torch.Tensor, tgt: torch.Tensor, margin: float = 0.4,
                 same_target: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """The paper's loss: for each anchor, relu(margin + hardest in-batch negative - positive).

    Anchors without a valid negative (every other word in the batch is one of its translations)
    are left out of the mean. Written without data-dependent shapes or host reads: the loss and
    its statistics (tensors in the returned dict) stay on the device until someone asks for them.
    """
    sims, neg_ok = batch_similarities(src, tgt, same_target)
    pos = sims.diagonal()
    neg, has_neg = _hardest_negative(sims, neg_ok)
    counted = has_neg.float()
    losses = F.relu(margin + neg - pos) * counted
    n = counted.sum()
    loss = losses.sum() / n.clamp_min(1.0)
    return loss, {"pos_sim": pos.mean().detach(), "neg_sim": ((neg * counted).sum() / n).detach(),  # nan: none
                  "active": (((losses > 0).float() * counted).sum() / n.clamp_min(1.0)).detach()}


def infonce_loss(src: torch.Tensor, tgt: torch.Tensor, temperature: float = 0.05,
                 same_target: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """InfoNCE: softmax over the batch's English words, the translation as the class."""
    sims, neg_ok = batch_similarities(src, tgt, same_target)
    logits = (sims / temperature).masked_fill(~(neg_ok | torch.eye(len(src), dtype=torch.bool,
                                                                    device=src.device)), float("-inf"))
    loss = F.cross_entropy(logits, torch.arange(len(src), device=src.device))
    neg, has_neg = _hardest_negative(sims, neg_ok)
    counted = has_neg.float()
    return loss, {"pos_sim": sims.diagonal().mean().detach(),
                  "neg_sim": ((neg * counted).sum() / counted.sum()).detach(),
                  "active": torch.ones((), device=src.device)}


# --------------------------------------------------------------------------- the model side

def attach_lora(model, config: TLIConfig, resolved: Resolved):
    """Wrap the (frozen, possibly 4-bit) model with fresh LoRA adapters; only they train."""
    from peft import LoraConfig, get_peft_model

    targets = resolved.target_modules
    blocks = resolved.adapter_blocks
    every = len(blocks) == resolved.num_layers
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(targets), bias="none", task_type="CAUSAL_LM",
                      layers_to_transform=None if every else [b - 1 for b in blocks],
                      layers_pattern=None if every else "layers")
    torch.manual_seed(config.seed)
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise TLIError(f"cannot attach LoRA to {', '.join(targets)}: {str(exc).splitlines()[0]}") from None


class Trainable:
    """What training needs of the method, whichever it is: the model to run, how to save what it learns,
    how to give the base model back."""

    def __init__(self, model, write, close, kind: str):
        self.model, self.write, self.close, self.kind = model, write, close, kind


def attach(model, config: TLIConfig, resolved: Resolved) -> Trainable:
    """LoRA adapters on the configured modules (the paper), or the learning blocks themselves (full fine-tuning)."""
    if config.method == "full":
        blocks = FullBlocks(model, resolved.learning_blocks)
        torch.manual_seed(config.seed)
        return Trainable(model, lambda d: blocks.write(d, config.model.model), blocks.close, "full")
    peft_model = attach_lora(model, config, resolved)
    return Trainable(peft_model, peft_model.save_pretrained, peft_model.unload, "lora")


def pooled_for_loss(model, ids, mask, weights, layers: Sequence[int], early_exit: bool) -> dict[int, torch.Tensor]:
    """Target-layer embeddings with gradient: early exit, or the paper's full forward."""
    if early_exit:
        return pooled_hidden_states(model, ids, mask, weights, layers)
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
    w = weights.to(torch.float32)
    return {k: F.normalize(torch.bmm(w.unsqueeze(1), out.hidden_states[k].float()).squeeze(1), dim=-1)
            for k in layers}


def step_loss(model, tok_src, tok_tgt, idx: Sequence[int], pad_id: int, config: TLIConfig,
              target_layers: Sequence[int], same_target: torch.Tensor | None, device) -> tuple[torch.Tensor, dict]:
    """Loss of one batch of pairs, averaged over the (resolved) target layers (tokens built on the host)."""
    n = len(idx)
    both = _concat_tokens(tok_src, tok_tgt, idx)
    ids, _, weights = make_batch(both, list(range(2 * n)), pad_id, config.pooling, device)
    return batch_loss(model, ids, weights, n, config, target_layers, same_target, device)


def batch_loss(model, ids: torch.Tensor, weights: torch.Tensor, n: int, config: TLIConfig,
               target_layers: Sequence[int], same_target: torch.Tensor | None, device) -> tuple[torch.Tensor, dict]:
    """Loss of a batch whose first ``n`` rows are Swahili words and last ``n`` their English translations.

    Rows are right-padded, and the model is causal: a word's tokens never see the padding after them,
    so the mask is the plain causal one, prepared once per width (see ``embeddings.causal_mask``: the
    library would otherwise read the mask on the host every forward). The statistics are device tensors.
    """
    vecs = pooled_for_loss(model, ids, causal_mask(model, ids.shape[1], ids.device), weights, target_layers,
                           config.early_exit)
    if config.negatives == "any-other":  # the authors' loss: only the row itself is no negative
        same_target = None
    losses, infos = [], []
    for k in target_layers:
        src, tgt = vecs[k][:n], vecs[k][n:]
        if config.loss == "triplet":
            loss, info = triplet_loss(src, tgt, config.margin, same_target)
        else:
            loss, info = infonce_loss(src, tgt, config.temperature, same_target)
        losses.append(loss.to(device))  # target layers may live on different GPUs when sharded
        infos.append(info)
    info = {key: torch.stack([i[key].to(device) for i in infos]).mean() for key in infos[0]}
    return torch.stack(losses).mean(), info


def _concat_tokens(tok_src, tok_tgt, idx):
    return Tokenised([tok_src.input_ids[i] for i in idx] + [tok_tgt.input_ids[i] for i in idx],
                     [tok_src.special[i] for i in idx] + [tok_tgt.special[i] for i in idx])


def translation_mask(index: PairIndex, batch: Sequence[int]) -> torch.Tensor:
    """[B, B]: True where batch row j's English word is a valid translation of row i's Swahili word.

    Such a word is no negative for anchor i: a repeated English word (two Swahili words, one
    translation) or a repeated Swahili anchor (one word, several translations) alike.
    """
    return torch.tensor([[index.is_gold(i, j) for j in batch] for i in batch], dtype=torch.bool)


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Shuffled batches; a last batch of one pair (no negative) joins the one before it."""
    order = torch.randperm(n, generator=generator).tolist()
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2:
        last = batches.pop()
        batches[-1] += last
    return batches


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- the loop

@dataclass
class TrainResult:
    state: str  # done | stopped | failed
    steps: int
    total_steps: int
    message: str = ""
    seconds: float = 0.0
    learning_blocks: list[int] = field(default_factory=list)


LOG_EVERY = 10  # steps between the host reading the step metrics (one device->host copy per window)
METRIC_KEYS = ("loss", "grad_norm", "pos_sim", "neg_sim", "active")


def learning_parameters(model, learning_blocks: Sequence[int]) -> list[torch.nn.Parameter]:
    """The trainable tensors that can receive a gradient: those in blocks 1..deepest target (``learning_blocks``).

    Adapters in later blocks stay attached (the saved adapter has the paper's layout) but never get
    a gradient, with or without early exit, so AdamW and the gradient norm skip them: the same
    updates, without iterating over tensors that cannot change.
    """
    blocks = {b - 1 for b in learning_blocks}
    out = []
    for name, p in model.named_parameters():
        m = re.search(r"\.layers\.(\d+)\.", name)
        if p.requires_grad and (m is None or int(m.group(1)) in blocks):
            out.append(p)
    return out


class DeviceBatches:
    """The training words tokenised once and kept on the device; each epoch's batch order and translation masks
    go there in one copy each, so a step builds its batch by indexing on the device (no host->device copy)."""

    def __init__(self, tok_src: Tokenised, tok_tgt: Tokenised, pad_id: int, pooling: str, device):
        self.n, self.device = len(tok_src.input_ids), device
        both = Tokenised(tok_src.input_ids + tok_tgt.input_ids, tok_src.special + tok_tgt.special)
        self.lengths = both.lengths
        self.ids, _, self.weights = make_batch(both, list(range(2 * self.n)), pad_id, pooling, device)
        self._order = self._masks = None

    def start_epoch(self, batches: list[list[int]], gold: PairIndex) -> None:
        width = max(len(b) for b in batches)
        masks = torch.zeros((len(batches), width, width), dtype=torch.bool)
        for s, b in enumerate(batches):
            masks[s, :len(b), :len(b)] = translation_mask(gold, b)
        self._order = torch.tensor([i for b in batches for i in b]).to(self.device)
        self._masks = masks.to(self.device)
        self._offsets = [0]
        for b in batches:
            self._offsets.append(self._offsets[-1] + len(b))

    def batch(self, s: int, b: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids [2B, T], pool weights [2B, T], translation mask [B, B]) of the epoch's ``s``-th batch ``b``."""
        idx = self._order[self._offsets[s]:self._offsets[s + 1]]
        rows = torch.cat([idx, idx + self.n])
        width = max(max(self.lengths[i], self.lengths[i + self.n]) for i in b)  # host-side lengths: no sync
        return (self.ids.index_select(0, rows)[:, :width], self.weights.index_select(0, rows)[:, :width],
                self._masks[s, :len(b), :len(b)])


def train(peft_model, tokenizer, trained: pd.DataFrame, config: TLIConfig, resolved: Resolved,
          on_step: Callable[[dict], None] | None = None,
          on_epoch: Callable[[int, object], None] | None = None,
          should_stop: Callable[[], bool] | None = None, log_every: int = LOG_EVERY,
          interruptible: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
          on_progress: Callable[[int, int], None] | None = None) -> TrainResult:
    """Train the adapters of ``peft_model`` on ``trained`` pairs; the caller saves and evaluates.

    A step never waits for the device: the batch is indexed on the device, the loss and its
    statistics stay there, and a non-finite loss is noted there. Every ``log_every`` steps (and
    at each epoch's end, before ``on_epoch``) the window's metrics come to the host in one copy;
    ``on_step`` then gets each step's metrics in order (``step_time`` is the window's mean), and a
    non-finite loss ends training as failed, naming the step where it first appeared.
    ``on_epoch(epoch, model)`` runs after every epoch (save a checkpoint there); ``should_stop``
    is polled between steps, and ``interruptible()`` wraps each step's forward and backward: a stop
    may cut those short (``Stopped``), since no weight changes before the optimiser step, which is
    never interrupted. Either way training ends "stopped" with the weights of the last whole step.
    ``on_progress(step, total)`` runs after every step (the host's count; no wait for the device).
    """
    from transformers import get_linear_schedule_with_warmup

    seed_everything(config.seed)
    device = peft_model.get_input_embeddings().weight.device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sink = config.pooling in SINK_POOLINGS
    tok_src = tokenise(tokenizer, list(trained["swahili"]), sink)
    tok_tgt = tokenise(tokenizer, list(trained["english"]), sink)
    data = DeviceBatches(tok_src, tok_tgt, pad_id, config.pooling, device)
    gold = pair_index(list(trained["swahili"]), list(trained["english"]))
    params = learning_parameters(peft_model, resolved.learning_blocks)
    # fused AdamW on CUDA: one kernel for all tensors, its step counters on the device (no host round trip)
    optimiser = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay,
                                  fused=True if device.type == "cuda" else None)
    generator = torch.Generator().manual_seed(config.seed)
    total = total_steps(len(trained), config.batch_size, config.epochs)
    scheduler = get_linear_schedule_with_warmup(optimiser, min(config.warmup_steps, total), total)
    peft_model.train()
    start, step = time.perf_counter(), 0
    result = TrainResult("done", 0, total, learning_blocks=list(resolved.learning_blocks))
    pending: list[tuple[dict, torch.Tensor]] = []  # steps whose metrics are still on the device
    window = {"start": time.perf_counter()}

    def flush() -> bool:
        """The pending steps' metrics to the host (one copy); False if a loss was not finite."""
        if not pending:
            return True
        values = torch.stack([v for _, v in pending]).tolist()
        seconds = (time.perf_counter() - window["start"]) / len(pending)
        window["start"] = time.perf_counter()
        rows, pending[:] = [dict(meta, **dict(zip(METRIC_KEYS, v, strict=True))) for (meta, _), v in
                            zip(pending, values, strict=True)], []
        for row in rows:
            if not math.isfinite(row["loss"]):
                result.state = "failed"
                result.message = (f"loss became {row['loss']} at step {row['step']}: training diverged; "
                                  f"lower the learning rate or enable gradient clipping")
                return False
            if on_step:
                on_step(dict(row, step_time=seconds, elapsed=time.perf_counter() - start))
        return True

    try:
        for epoch in range(1, config.epochs + 1):
            batches = epoch_batches(len(trained), config.batch_size, generator)
            data.start_epoch(batches, gold)
            for s, batch in enumerate(batches):
                if should_stop and should_stop():
                    if flush():
                        result.state, result.message = "stopped", f"stopped by request after step {step}"
                    return result
                ids, weights, same = data.batch(s, batch)
                try:
                    with interruptible():
                        loss, info = batch_loss(peft_model, ids, weights, len(batch), config, resolved.target_layers,
                                                same, device)
                        optimiser.zero_grad(set_to_none=True)
                        loss.backward()
                except Stopped:
                    optimiser.zero_grad(set_to_none=True)
                    if flush():
                        result.state, result.message = "stopped", f"stopped by request after step {step}"
                    return result
                grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip or float("inf"))
                lr = scheduler.get_last_lr()[0]
                optimiser.step()
                scheduler.step()
                step += 1
                result.steps = step
                if on_progress:
                    on_progress(step, total)
                pending.append(({"step": step, "total_steps": total, "epoch": epoch, "lr": lr},
                                torch.stack([loss.detach().float(), grad_norm.float().to(device)]
                                            + [info[k].float() for k in METRIC_KEYS[2:]])))
                if len(pending) >= log_every and not flush():
                    return result
            if not flush():  # before a checkpoint is written: a diverged epoch is never saved
                return result
            if on_epoch:
                peft_model.eval()
                on_epoch(epoch, peft_model)
                peft_model.train()
        return result
    finally:
        peft_model.eval()
        result.seconds = time.perf_counter() - start


def gradient_blocks(model) -> list[int]:
    """Blocks (1-based) whose trainable weights (LoRA's, or a fine-tuned block's) hold a non-zero gradient."""
    blocks = set()
    for name, p in model.named_parameters():
        if p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0:
            m = re.search(r"\.layers\.(\d+)\.", name)
            if m:
                blocks.add(int(m.group(1)) + 1)
    return sorted(blocks)


def time_step(model, tokenizer, pairs: pd.DataFrame, config: TLIConfig, target_layers: Sequence[int],
              repeats: int = 2) -> float:
    """Seconds one training step of ``config`` takes on ``model`` here, measured without changing the model.

    The step's forward to the target layer(s) and its backward through the blocks, on the first ``batch_size``
    pairs; the gradient is taken with respect to the input embeddings, so no weight needs one and nothing is
    trained (an adapter's own few parameters add little to a step). The median of ``repeats`` after a warm-up.
    """
    from .anatomy import model_lock

    n = max(2, min(config.batch_size, len(pairs)))
    sub = pairs.iloc[:n]
    device = model.get_input_embeddings().weight.device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sink = config.pooling in SINK_POOLINGS
    tok_src = tokenise(tokenizer, list(sub["swahili"]), sink)
    tok_tgt = tokenise(tokenizer, list(sub["english"]), sink)
    same = translation_mask(pair_index(list(sub["swahili"]), list(sub["english"])), list(range(n))).to(device)

    def needs_grad(module, args, output):
        return output.detach().requires_grad_()

    seconds = []
    with model_lock(model), torch.inference_mode(False), torch.enable_grad():
        handle = model.get_input_embeddings().register_forward_hook(needs_grad)
        try:
            for _ in range(repeats + 1):
                start = time.perf_counter()
                loss, _ = step_loss(model, tok_src, tok_tgt, list(range(n)), pad_id, config, target_layers, same,
                                    device)
                loss.backward()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds.append(time.perf_counter() - start)
        finally:
            handle.remove()
    return float(np.median(seconds[1:]))
