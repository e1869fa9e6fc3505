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

import math
import random
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .embeddings import POOLINGS, make_batch, pooled_hidden_states, tokenise
from .errors import TLIError
from .models import ModelSpec, default_lora_targets, paper_eval_layer, resolve_layer
from .pairs import DEFAULT_CONTROL, DEFAULT_TRAINED

LOSSES = ("triplet", "infonce")
PLACEMENTS = ("all", "up_to_target", "early", "late")


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass
class TLIConfig:
    """One TLI run. Defaults are the paper's published settings (arXiv 2506.15415)."""

    model: ModelSpec = _help("the model and how to load it (default: demo, NF4 as the paper)",
                             default_factory=ModelSpec)
    trained_pairs: str = _help("word pairs to train on (CSV/TSV/JSON/JSONL)", default=str(DEFAULT_TRAINED))
    control_pairs: str = _help("unseen word pairs, evaluated only", default=str(DEFAULT_CONTROL))
    trained_subset: int | None = _help("train on a seeded random sample of this many pairs (default: all)",
                                       default=None)
    control_subset: int | None = _help("evaluate a seeded random sample of this many control pairs",
                                       default=None)
    target_layers: list[int] = _help("layer(s) whose embeddings the loss is computed on (loss averaged); "
                                     "the paper: 2", default_factory=lambda: [2])
    eval_layer: int | None = _help("layer for the before/after statistics; default: the paper's 'layer 31' "
                                   "= hidden_states[L-1], output of block L-1", default=None)
    pooling: str = _help("mean (paper) | mean_words | mean_no_first | last", default="mean")
    lora_r: int = _help("LoRA rank", default=16)
    lora_alpha: int = _help("LoRA alpha (scaling = alpha / r)", default=32)
    lora_dropout: float = _help("dropout on the LoRA input", default=0.05)
    target_modules: list[str] | None = _help("modules that get adapters (default per architecture: "
                                             "q_proj, v_proj)", default=None)
    adapter_blocks: str = _help("which blocks get adapters: all (paper) | up_to_target | early (first half) | "
                                "late (second half) | a list such as 1-4,8 (blocks numbered from 1)",
                                default="all")
    loss: str = _help("triplet (paper: hardest in-batch negative with margin) | infonce", default="triplet")
    margin: float = _help("triplet margin", default=0.4)
    temperature: float = _help("InfoNCE temperature", default=0.05)
    learning_rate: float = _help("AdamW learning rate", default=2e-4)
    warmup_steps: int = _help("linear warm-up steps, then linear decay to 0", default=50)
    epochs: int = _help("passes over the trained pairs; the adapter is saved after each", default=5)
    batch_size: int = _help("pairs per step (in-batch negatives need at least 2)", default=8)
    weight_decay: float = _help("AdamW weight decay (not published; torch's default)", default=0.01)
    grad_clip: float | None = _help("clip the gradient norm (not published; the transformers Trainer "
                                    "default 1.0); none = off", default=1.0)
    seed: int = _help("seed for LoRA initialisation, dropout and batch order", default=42)
    early_exit: bool = _help("stop the forward after the deepest target layer (same loss, faster)",
                             default=True)
    allow_overlap: bool = _help("accept trained/control overlap (otherwise an error)", default=False)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TLIConfig":
        d = dict(d)
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise TLIError(f"unknown setting(s) in the config: {', '.join(sorted(unknown))}")
        model = d.pop("model", {})
        d["model"] = model if isinstance(model, ModelSpec) else ModelSpec.from_dict(model)
        if "target_layers" in d:
            tl = d["target_layers"]
            d["target_layers"] = [tl] if isinstance(tl, int) else [int(k) for k in tl]
        return cls(**d)

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}


# --------------------------------------------------------------------------- validation

def parse_blocks(text: str, num_layers: int) -> list[int]:
    """'1-4,8' -> [1, 2, 3, 4, 8], checked against the model's blocks 1..L."""
    out: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                out.update(range(a, b + 1))
            elif part:
                out.add(int(part))
        except ValueError:
            raise TLIError(f"cannot read adapter blocks {text!r}: use all, up_to_target, early, late "
                           f"or numbers such as 1-4,8") from None
    bad = sorted(b for b in out if not 1 <= b <= num_layers)
    if bad or not out:
        raise TLIError(f"adapter blocks must be within 1..{num_layers} (got {text!r})")
    return sorted(out)


def adapter_blocks(config: TLIConfig, num_layers: int) -> list[int]:
    """Blocks (numbered 1..L, block k produces layer k) that receive LoRA adapters."""
    spec = str(config.adapter_blocks).strip()
    deepest = max(config.target_layers)
    half = max(1, num_layers // 2)
    if spec == "all":
        return list(range(1, num_layers + 1))
    if spec == "up_to_target":
        return list(range(1, deepest + 1))
    if spec == "early":
        return list(range(1, half + 1))
    if spec == "late":
        return list(range(half + 1, num_layers + 1))
    return parse_blocks(spec, num_layers)


def learning_blocks(config: TLIConfig, num_layers: int) -> list[int]:
    """Adapter blocks the loss can reach: only blocks up to the deepest target layer get gradient."""
    deepest = max(config.target_layers)
    return [b for b in adapter_blocks(config, num_layers) if b <= deepest]


def validate(config: TLIConfig, num_layers: int | None = None, n_trained: int | None = None,
             n_control: int | None = None) -> list[str]:
    """Raise TLIError for settings that cannot work; return warnings for ones that are unusual.

    Called before any compute: with the model's number of blocks once known, and the sizes of
    the pair sets once read.
    """
    warnings = []
    if config.lora_r < 1:
        raise TLIError(f"LoRA rank must be at least 1 (got {config.lora_r})")
    if config.lora_alpha <= 0:
        raise TLIError(f"LoRA alpha must be positive (got {config.lora_alpha})")
    if not 0 <= config.lora_dropout < 1:
        raise TLIError(f"LoRA dropout must be in [0, 1) (got {config.lora_dropout})")
    if config.loss not in LOSSES:
        raise TLIError(f"unknown loss {config.loss!r}; use one of {', '.join(LOSSES)}")
    if config.batch_size < 2:
        raise TLIError(f"batch size {config.batch_size} leaves no in-batch negatives: the {config.loss} loss "
                       f"compares each Swahili word with the other English words in its batch; use 2 or more")
    if config.epochs < 1:
        raise TLIError(f"epochs must be at least 1 (got {config.epochs})")
    if not config.learning_rate > 0:
        raise TLIError(f"learning rate must be positive (got {config.learning_rate})")
    if config.warmup_steps < 0:
        raise TLIError(f"warm-up steps cannot be negative (got {config.warmup_steps})")
    if config.margin < 0:
        raise TLIError(f"triplet margin cannot be negative (got {config.margin})")
    if config.loss == "infonce" and not config.temperature > 0:
        raise TLIError(f"InfoNCE temperature must be positive (got {config.temperature})")
    if config.grad_clip is not None and config.grad_clip <= 0:
        raise TLIError(f"gradient clipping must be positive or none (got {config.grad_clip})")
    if config.pooling not in POOLINGS:
        raise TLIError(f"unknown pooling {config.pooling!r}; use one of {', '.join(POOLINGS)}")
    if not config.target_layers:
        raise TLIError("at least one target layer is needed")
    for name, n in (("trained", config.trained_subset), ("control", config.control_subset)):
        if n is not None and n < 2:
            raise TLIError(f"a {name} subset needs at least 2 pairs (got {n})")
    if num_layers is not None:
        targets = [resolve_layer(k, num_layers, "target layer") for k in config.target_layers]
        if 0 in targets:
            raise TLIError("target layer 0 is the input embedding table: LoRA adapters on attention "
                           "cannot change it; use layer 1 or deeper (the paper: 2)")
        config.target_layers = targets
        config.eval_layer = resolve_layer(paper_eval_layer(num_layers) if config.eval_layer is None
                                          else config.eval_layer, num_layers, "evaluation layer")
        blocks = adapter_blocks(config, num_layers)
        if not learning_blocks(config, num_layers):
            raise TLIError(f"no adapter sits in blocks 1..{max(targets)}: a loss on layer {max(targets)} "
                           f"cannot reach adapters in blocks {blocks[0]}..{blocks[-1]}, so nothing would train")
        idle = len(blocks) - len(learning_blocks(config, num_layers))
        if idle:
            warnings.append(f"{idle} of {len(blocks)} adapter blocks lie beyond target layer {max(targets)}: "
                            f"they get no gradient and stay at zero (only blocks 1..{max(targets)} learn)")
    if n_trained is not None:
        if n_trained < 2:
            raise TLIError(f"the trained set has {n_trained} pair(s); at least 2 are needed")
        if n_trained < config.batch_size:
            warnings.append(f"the trained set ({n_trained} pairs) is smaller than one batch "
                            f"({config.batch_size}); each step uses all of it")
    if n_control is not None and n_control == 0:
        raise TLIError("the control set is empty: TLI's claim is about unseen words; give a control file")
    return warnings


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

def attach_lora(model, config: TLIConfig, num_layers: int):
    """Wrap the (frozen, possibly 4-bit) model with fresh LoRA adapters; only they train."""
    from peft import LoraConfig, get_peft_model

    targets = config.target_modules or default_lora_targets(model.config.model_type)
    blocks = adapter_blocks(config, num_layers)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(targets), bias="none", task_type="CAUSAL_LM",
                      layers_to_transform=None if len(blocks) == num_layers else [b - 1 for b in blocks],
                      layers_pattern=None if len(blocks) == num_layers else "layers")
    torch.manual_seed(config.seed)
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise TLIError(f"cannot attach LoRA to {', '.join(targets)}: {str(exc).splitlines()[0]}") from None


def pooled_for_loss(model, ids, mask, weights, layers: Sequence[int], early_exit: bool) -> dict[int, torch.Tensor]:
    """Target-layer embeddings with gradient: early exit, or the paper's full forward."""
    if early_exit:
        return pooled_hidden_states(model, ids, mask, weights, layers)
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
    w = weights.to(torch.float32)
    return {k: F.normalize(torch.bmm(w.unsqueeze(1), out.hidden_states[k].float()).squeeze(1), dim=-1)
            for k in layers}


def step_loss(model, tok_src, tok_tgt, idx: Sequence[int], pad_id: int, config: TLIConfig,
              same_target: torch.Tensor | None, device) -> tuple[torch.Tensor, dict]:
    """Loss of one batch of pairs, averaged over the target layers."""
    n = len(idx)
    both = _concat_tokens(tok_src, tok_tgt, idx)
    ids, mask, weights = make_batch(both, list(range(2 * n)), pad_id, config.pooling, device)
    vecs = pooled_for_loss(model, ids, mask, weights, config.target_layers, config.early_exit)
    losses, infos = [], []
    for k in config.target_layers:
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
    from .embeddings import Tokenised

    return Tokenised([tok_src.input_ids[i] for i in idx] + [tok_tgt.input_ids[i] for i in idx],
                     [tok_src.special[i] for i in idx] + [tok_tgt.special[i] for i in idx])


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


def train(peft_model, tokenizer, trained: pd.DataFrame, config: TLIConfig, num_layers: int,
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
    english = trained["english"].str.casefold().to_numpy()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    total = total_steps(len(trained), config.batch_size, config.epochs)
    scheduler = get_linear_schedule_with_warmup(optimiser, min(config.warmup_steps, total), total)
    peft_model.train()
    start, step = time.perf_counter(), 0
    result = TrainResult("done", 0, total, learning_blocks=learning_blocks(config, num_layers))
    try:
        for epoch in range(1, config.epochs + 1):
            for batch in epoch_batches(len(trained), config.batch_size, generator):
                if should_stop and should_stop():
                    result.state, result.message = "stopped", f"stopped by request after step {step}"
                    return result
                t0 = time.perf_counter()
                same = torch.as_tensor(english[batch][:, None] == english[batch][None, :])
                loss, info = step_loss(peft_model, tok_src, tok_tgt, batch, pad_id, config, same, device)
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


def gradient_blocks(peft_model) -> list[int]:
    """Blocks (1-based) whose LoRA weights currently hold a non-zero gradient (after a backward)."""
    import re

    blocks = set()
    for name, p in peft_model.named_parameters():
        if "lora_" in name and p.grad is not None and p.grad.abs().sum() > 0:
            m = re.search(r"\.layers\.(\d+)\.", name)
            if m:
                blocks.add(int(m.group(1)) + 1)
    return sorted(blocks)


def total_steps(n_pairs: int, batch_size: int, epochs: int) -> int:
    """Optimiser steps of a run (what the progress bar counts to)."""
    per_epoch = math.ceil(n_pairs / batch_size)
    if per_epoch > 1 and n_pairs % batch_size == 1:
        per_epoch -= 1
    return per_epoch * epochs
