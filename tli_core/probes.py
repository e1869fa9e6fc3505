"""Generation probes, as in the paper's qualitative check: "The English word for 'X' is" -> ?

Greedy continuations of editable templates in both directions, for the base model and the
model with a run's adapter, side by side.
"""

from __future__ import annotations

import re
from typing import Sequence

import pandas as pd
import torch

from .adapters import temporary_adapter
from .anatomy import input_device, model_lock
from .errors import TLIError

TEMPLATES = {
    "sw→en": "The English word for '{word}' is",
    "en→sw": "The Swahili word for '{word}' is",
}


def answer(text: str) -> str:
    """The answer a continuation gives: its first words, up to a closing quote or punctuation.

    " 'maji', which means ..." -> "maji"; " water." -> "water".
    """
    m = re.match(r"\s*[\"'“‘«]?\s*([^\"'”’»\n,.;:!?()]*)", text)
    return m.group(1).strip() if m else ""


def prompts_for(pairs: pd.DataFrame, templates: dict[str, str]) -> pd.DataFrame:
    rows = []
    for direction, template in templates.items():
        if "{word}" not in template:
            raise TLIError(f"template for {direction} must contain {{word}}: {template!r}")
        src, tgt = ("swahili", "english") if direction.startswith("sw") else ("english", "swahili")
        for _, r in pairs.iterrows():
            rows.append({"direction": direction, "word": r[src], "expected": r[tgt],
                         "set": r.get("set", ""), "prompt": template.format(word=r[src])})
    return pd.DataFrame(rows)


def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 8, batch_size: int = 16) -> list[str]:
    """Greedy continuations, batched with left padding (the shared tokenizer is not changed)."""
    outputs = []
    device = input_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with model_lock(model), torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start:start + batch_size])
            enc = tokenizer(chunk, return_tensors="pt", padding=True, padding_side="left").to(device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 pad_token_id=pad, temperature=None, top_p=None, top_k=None)
            new = out[:, enc["input_ids"].shape[1]:]
            outputs += tokenizer.batch_decode(new, skip_special_tokens=True)
    return outputs


def _correct(expected: str, output: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(expected.casefold())}(?!\w)", output.casefold()) is not None


def run_probes(model, tokenizer, pairs: pd.DataFrame, templates: dict[str, str] | None = None,
               adapter_dir=None, max_new_tokens: int = 8) -> pd.DataFrame:
    """One row per (pair, direction): prompt, expected word, base output (and, with a run's
    adapter, the tuned output). The base model answers first, before the adapter is attached:
    attaching injects LoRA into the same modules."""
    table = prompts_for(pairs, templates or TEMPLATES)
    prompts = list(table["prompt"])
    columns = {"base": generate(model, tokenizer, prompts, max_new_tokens)}
    if adapter_dir is not None:
        with temporary_adapter(model, adapter_dir) as tuned:
            columns["tuned"] = generate(tuned, tokenizer, prompts, max_new_tokens)
    for name, raw in columns.items():
        table[name] = [answer(t) for t in raw]
        table[f"{name}_correct"] = [_correct(e, t) for e, t in zip(table["expected"], raw, strict=True)]
        table[f"{name}_text"] = [t.strip() for t in raw]
    return table
