"""Build the local word-choice tasks from the shipped pairs: `python assets/lm_eval_tasks/make_tasks.py`.

test  = the 63 control pairs (never trained on), each with 3 distractors drawn from the other
        control pairs' translations; train = 20 trained pairs the same way, for few-shot examples.
Seeded, so the files are reproducible exactly.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
ASSETS = HERE.parent
SEED = 2506


def items(df: pd.DataFrame, source: str, target: str, rng: random.Random) -> list[dict]:
    out = []
    for i, row in df.reset_index(drop=True).iterrows():
        others = [w for w in df[target] if w != row[target]]
        choices = rng.sample(others, 3) + [row[target]]
        rng.shuffle(choices)
        out.append({"id": f"{source}-{i}", "word": row[source], "choices": choices,
                    "label": choices.index(row[target])})
    return out


def main() -> None:
    control = pd.read_csv(ASSETS / "pairs_control.csv")
    trained = pd.read_csv(ASSETS / "pairs_trained.csv").head(20)
    for direction, (source, target) in {"sw_en": ("swahili", "english"), "en_sw": ("english", "swahili")}.items():
        rng = random.Random(SEED)
        for split, df in (("test", control), ("train", trained)):
            rows = items(df, source, target, rng)
            (HERE / f"{direction}_{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                                       for r in rows), encoding="utf-8")


if __name__ == "__main__":
    main()
