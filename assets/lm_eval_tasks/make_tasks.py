"""Build the local word-choice tasks from the shipped pairs: `python assets/lm_eval_tasks/make_tasks.py`.

test  = the 63 control pairs (never trained on), each with 3 distractors drawn from the other
        control pairs' translations; train = 20 trained pairs the same way, for few-shot examples.
Seeded, so the files are reproducible exactly. A benchmarked run builds its own items the same way
from its own sets (``tli_core.downstream.write_local_items``); these files serve anyone running the
task YAMLs with lm-eval directly.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
ASSETS = HERE.parent
sys.path.insert(0, str(ASSETS.parent))

from tli_core.downstream import write_local_items  # noqa: E402


def main() -> None:
    control = pd.read_csv(ASSETS / "pairs_control.csv")
    trained = pd.read_csv(ASSETS / "pairs_trained.csv")
    write_local_items(HERE, control, trained)


if __name__ == "__main__":
    main()
