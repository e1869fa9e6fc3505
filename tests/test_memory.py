"""The batch-size chooser keeps a forward within the memory budget it was given (measured, not timed).

Measured in a fresh process as the growth of the resident set's high-water mark (VmHWM, reset
through /proc/self/clear_refs) while embedding long words with the chosen batch size. Large
tensors are allocated with mmap and returned on free, so the peak follows the live tensors.
The words all have one length, the chooser's worst case: every batch is as long as the longest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from tests.conftest import build_tiny_model
from tli_core.models import ModelSpec, load_model
from tli_core.embeddings import choose_batch_size, embed, tokenise

torch.set_num_threads(1)
path = build_tiny_model(__import__("pathlib").Path(sys.argv[2]), layers=4, hidden=256)
lm = load_model(ModelSpec(model=str(path), quantization="fp32", device="cpu"))
# 400 different words of one token length: batches fill to the chosen size (words of mixed
# lengths are split into smaller, padding-free batches, which would flatter the chooser)
text = "habari za asubuhi njema sana rafiki wangu mpendwa " * 2
words = [text[i % 50: i % 50 + 49] for i in range(400)]
embed(lm.model, lm.tokenizer, words[:4])  # warm up allocator and kernels

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

def peak_growth(batch_size):
    open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
    base = status("VmRSS")
    embed(lm.model, lm.tokenizer, words, batch_size=batch_size)
    return status("VmHWM") - base

budget = int(sys.argv[3])
seq = max(tokenise(lm.tokenizer, words).lengths)
chosen = choose_batch_size(lm.model, seq, 5, budget=budget, cap=10**6)
result = {"chosen": chosen, "growth": peak_growth(chosen), "growth_x8": peak_growth(8 * chosen),
          "result_bytes": 5 * len(words) * 256 * 4}
print(json.dumps(result))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to measure peak memory")
@pytest.mark.parametrize("budget_mib", [8, 48])
def test_chosen_batch_stays_within_the_budget(tmp_path, budget_mib):
    budget = budget_mib * 2**20
    # a fixed mmap threshold: glibc otherwise keeps freed blocks in the heap and the peak stops tracking tensors
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT), str(tmp_path / "m"), str(budget)],
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="131072"))
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["chosen"] > 1
    # the output tensor [layers x words x dim] is kept whatever the batch size; the budget is for the forward
    assert r["growth"] - r["result_bytes"] <= budget, r
    # and the measurement can tell: eight times the batch goes over the budget
    assert r["growth_x8"] - r["result_bytes"] > budget, r
