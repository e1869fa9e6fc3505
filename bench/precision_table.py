"""How far can a per-pair cosine be trusted? Per layer, max and mean |Δcos| of each translation pair between:

  default   the engine's default analysis (float32 on the model's own weights, words packed several to a row)
  fp32-ref  an independent float32 reference: one unpadded forward per word (the paper's loop), full
            decoder with output_hidden_states, mean over the word's tokens -- same weights
  bf16      the engine with the model's compute dtype (the paper's bf16) instead of float32

Usage:  python bench/precision_table.py [--model demo] [--pooling mean] [--words N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tli_core.util import quiet_libraries  # noqa: E402

quiet_libraries()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tli_core.anatomy import decoder_parts  # noqa: E402
from tli_core.embeddings import embed, pool_weight_row, tokenise  # noqa: E402
from tli_core.models import ModelSpec, load_model  # noqa: E402
from tli_core.pairs import load_default_pairs  # noqa: E402
from tli_core.precision import NOISE_LIMIT, analysis_precision  # noqa: E402


def reference(lm, words, pooling):
    """One forward per word, float32 on the same weights: [layers, words, dim]."""
    decoder = decoder_parts(lm.model)[0]
    tok = tokenise(lm.tokenizer, words)
    out = []
    with analysis_precision(lm.model, "float32"), torch.no_grad():
        for ids, special in zip(tok.input_ids, tok.special, strict=True):
            hs = decoder(input_ids=torch.tensor([ids]), output_hidden_states=True, use_cache=False).hidden_states
            w = torch.tensor(pool_weight_row(special, pooling), dtype=torch.float64)
            out.append(torch.stack([torch.nn.functional.normalize((w[:, None] * h[0].double()).sum(0), dim=-1)
                                    for h in hs]))
    return torch.stack(out, 1)


def pair_cos(v: torch.Tensor, n: int) -> np.ndarray:
    v = v.double()
    return (v[:, :n] * v[:, n:]).sum(-1).numpy()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--pooling", default="mean")
    p.add_argument("--words", type=int, default=0, help="use only the first N pairs (0 = all 686)")
    args = p.parse_args()
    lm = load_model(ModelSpec(model=args.model, quantization="nf4", device="cpu"))
    trained, control = load_default_pairs()
    sw = list(trained["swahili"]) + list(control["swahili"])
    en = list(trained["english"]) + list(control["english"])
    if args.words:
        sw, en = sw[:args.words], en[:args.words]
    n, words = len(sw), sw + en
    t0 = time.perf_counter()
    default = pair_cos(embed(lm.model, lm.tokenizer, words, pooling=args.pooling).vectors, n)
    t_default = time.perf_counter() - t0
    t0 = time.perf_counter()
    bf16 = pair_cos(embed(lm.model, lm.tokenizer, words, pooling=args.pooling, precision="compute").vectors, n)
    t_bf16 = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = pair_cos(reference(lm, words, args.pooling), n)
    t_ref = time.perf_counter() - t0
    print(f"{lm.facts.name}, NF4 weights, {n} pairs (default sets), pooling {args.pooling}; times: default "
          f"{t_default:.1f} s, bf16 {t_bf16:.1f} s, per-word reference {t_ref:.1f} s")
    print(f"{'layer':>5} | {'default vs fp32-ref max':>23} {'mean':>9} | {'bf16 vs fp32-ref max':>20} {'mean':>9} | "
          f"{'layer-mean |Δ| bf16':>19}")
    for k in range(ref.shape[0]):
        d, b = np.abs(default[k] - ref[k]), np.abs(bf16[k] - ref[k])
        flag = "  ⚠ > 1e-3" if b.max() > NOISE_LIMIT else ""
        print(f"{k:>5} | {d.max():>23.2e} {d.mean():>9.2e} | {b.max():>20.2e} {b.mean():>9.2e} | "
              f"{abs(bf16[k].mean() - ref[k].mean()):>19.2e}{flag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
