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
from .embeddings import Tokenised, make_batch, pooled_hidden_states, tokenise
from .errors import TLIError
from .fullft import FullBlocks

# --------------------------------------------------------------------------- losses

def batch_similarities(src: torch.Tensor, tgt: torch.Tensor, same_target: torch.Tensor | None = None):
    """Cosine matrix [B, B] and the mask of valid negatives (not the diagonal, not a synonym target)."""
    sims = src @ tgt.T
    neg_ok = ~torch.eye(len(src), dtype=torch.bool, device=src.device)
    if same_target is not None:
        neg_ok &= ~same_target.to(src.device)
    return sims, neg_ok


def triplet_loss(src: torch.Tensor, tgt: torch.Tensor, margin: float = 0.4,
                 same_target: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """The paper's loss: for each anchor, relu(margin + hardest in-batch negative - positive)."""
    sims, neg_ok = batch_similarities(src, tgt, same_target)
    pos = sims.diagonal()
    neg = sims.masked_fill(~neg_ok, float("-inf")).max(dim=1).values
    has_neg = torch.isfinite(neg)
    losses = F.relu(margin + neg - pos)[has_neg]
    loss = losses.mean() if len(losses) else sims.sum() * 0.0
    return loss, {"pos_sim": pos.mean().item(), "neg_sim": neg[has_neg].mean().item() if has_neg.any() else
                  float("nan"), "active": (losses > 0).float().mean().item() if len(losses) else 0.0}


def infonce_loss(src: torch.Tensor, tgt: torch.Tensor, temperature: float = 0.05,
                 same_target: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """InfoNCE: softmax over the batch's English words, the translation as the class."""
    sims, neg_ok = batch_similarities(src, tgt, same_target)
    logits = (sims / temperature).masked_fill(~(neg_ok | torch.eye(len(src), dtype=torch.bool,
                                                                    device=src.device)), float("-inf"))
    loss = F.cross_entropy(logits, torch.arange(len(src), device=src.device))
    neg = sims.masked_fill(~neg_ok, float("-inf")).max(dim=1).values
    return loss, {"pos_sim": sims.diagonal().mean().item(),
                  "neg_sim": neg[torch.isfinite(neg)].mean().item() if torch.isfinite(neg).any() else float("nan"),
                  "active": 1.0}


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
    """Loss of one batch of pairs, averaged over the (resolved) target layers."""
    n = len(idx)
    both = _concat_tokens(tok_src, tok_tgt, idx)
    ids, mask, weights = make_batch(both, list(range(2 * n)), pad_id, config.pooling, device)
    vecs = pooled_for_loss(model, ids, mask, weights, target_layers, config.early_exit)
    losses, infos = [], []
    for k in target_layers:
        src, tgt = vecs[k][:n], vecs[k][n:]
        if config.loss == "triplet":
            loss, info = triplet_loss(src, tgt, config.margin, same_target)
        else:
            loss, info = infonce_loss(src, tgt, config.temperature, same_target)
        losses.append(loss.to(device))  # target layers may live on different GPUs when sharded
        infos.append(info)
    info = {key: float(np.mean([i[key] for i in infos])) for key in infos[0]}
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


def train(peft_model, tokenizer, trained: pd.DataFrame, config: TLIConfig, resolved: Resolved,
          on_step: Callable[[dict], None] | None = None,
          on_epoch: Callable[[int, object], None] | None = None,
          should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Train the adapters of ``peft_model`` on ``trained`` pairs; the caller saves and evaluates.

    ``on_step`` gets each step's metrics; ``on_epoch(epoch, model)`` runs after every epoch
    (save a checkpoint there); ``should_stop`` is polled between steps.
    """
    from transformers import get_linear_schedule_with_warmup

    seed_everything(config.seed)
    device = peft_model.get_input_embeddings().weight.device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tok_src = tokenise(tokenizer, list(trained["swahili"]))
    tok_tgt = tokenise(tokenizer, list(trained["english"]))
    gold = pair_index(list(trained["swahili"]), list(trained["english"]))
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    total = total_steps(len(trained), config.batch_size, config.epochs)
    scheduler = get_linear_schedule_with_warmup(optimiser, min(config.warmup_steps, total), total)
    peft_model.train()
    start, step = time.perf_counter(), 0
    result = TrainResult("done", 0, total, learning_blocks=list(resolved.learning_blocks))
    try:
        for epoch in range(1, config.epochs + 1):
            for batch in epoch_batches(len(trained), config.batch_size, generator):
                if should_stop and should_stop():
                    result.state, result.message = "stopped", f"stopped by request after step {step}"
                    return result
                t0 = time.perf_counter()
                same = translation_mask(gold, batch)
                loss, info = step_loss(peft_model, tok_src, tok_tgt, batch, pad_id, config, resolved.target_layers,
                                       same, device)
                if not torch.isfinite(loss):
                    result.state = "failed"
                    result.message = (f"loss became {loss.item()} at step {step + 1}: training diverged; "
                                      f"lower the learning rate or enable gradient clipping")
                    return result
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip or float("inf"))
                lr = scheduler.get_last_lr()[0]
                optimiser.step()
                scheduler.step()
                step += 1
                result.steps = step
                if on_step:
                    on_step({"step": step, "total_steps": total, "epoch": epoch, "loss": loss.item(), "lr": lr,
                             "grad_norm": float(grad_norm), "step_time": time.perf_counter() - t0,
                             "elapsed": time.perf_counter() - start, **info})
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
