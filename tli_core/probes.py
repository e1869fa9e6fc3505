"""Generation probes, as in the paper's qualitative check: "The English word for 'X' is" -> ?

Greedy continuations of editable templates in both directions, for the base model and the
model with a run's trained weights, side by side.
"""

from __future__ import annotations

import re
from typing import Sequence

import pandas as pd
import torch

from .anatomy import input_device, model_lock
from .errors import TLIError
from .trained import trained_model

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
               weights_dir=None, max_new_tokens: int = 8) -> pd.DataFrame:
    """One row per (pair, direction): prompt, expected word, base output (and, with a run's
    trained weights -- adapter or fine-tuned blocks -- the tuned output). The base model answers
    first, before the weights are put in: they change the same modules."""
    table = prompts_for(pairs, templates or TEMPLATES)
    prompts = list(table["prompt"])
    columns = {"base": generate(model, tokenizer, prompts, max_new_tokens)}
    if weights_dir is not None:
        with trained_model(model, weights_dir) as tuned:
            columns["tuned"] = generate(tuned, tokenizer, prompts, max_new_tokens)
    for name, raw in columns.items():
        table[name] = [answer(t) for t in raw]
        table[f"{name}_correct"] = [_correct(e, t) for e, t in zip(table["expected"], raw, strict=True)]
        table[f"{name}_text"] = [t.strip() for t in raw]
    return table


def probe_scores(table: pd.DataFrame) -> pd.DataFrame:
    """Translation quality of each model's answers against the expected words, per direction and overall:
    the exact-match rate (the expected word in the continuation), chrF and BLEU (sacrebleu, corpus level).

    BLEU uses the effective n-gram order: answers are one or two words, with no 3- or 4-grams, and standard
    corpus BLEU would be 0 for every model.
    """
    import sacrebleu
    from sacrebleu.metrics import BLEU

    bleu = BLEU(effective_order=True)

    rows = []
    models = [m for m in ("base", "tuned") if m in table]
    for direction, d in [("all", table)] + list(table.groupby("direction", sort=False)):
        refs = [list(d["expected"].astype(str))]
        for m in models:
            hyps = list(d[m].fillna("").astype(str))
            rows.append({"direction": direction, "model": m, "n": len(d),
                         "expected word found": d[f"{m}_correct"].mean(),
                         "chrF": sacrebleu.corpus_chrf(hyps, refs).score,
                         "BLEU": bleu.corpus_score(hyps, refs).score})
    return pd.DataFrame(rows)
