"""Command-line interface: ``python -m tli_core scan | train | evaluate | compare | sweep | runs``.

Every user error prints one ``error: ...`` line on stderr and exits with status 2, having
written nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from pathlib import Path

from .errors import TLIError

EXIT_USER_ERROR = 2


# --------------------------------------------------------------------------- helpers

def quiet_libraries() -> None:
    """Keep the terminal for our own output: no library banners or weight-loading bars."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    for name in ("transformers", "bitsandbytes", "peft", "accelerate", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def parse_layers(text: str | None) -> list[int] | None:
    """'0,2,5-8' -> [0, 2, 5, 6, 7, 8]; ranges are inclusive; -1 is the final layer; None = all."""
    import re

    if text is None or text.strip() in ("", "all"):
        return None
    out: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?", part)
        if not m:
            raise TLIError(f"cannot read layers {text!r}: use numbers and ranges such as 0,2,5-8")
        a, b = int(m.group(1)), int(m.group(2)) if m.group(2) is not None else None
        out += [a] if b is None else list(range(a, b + 1))
    return out


class TerminalProgress:
    """A one-line progress bar on stderr (silent when stderr is not a terminal and quiet is set)."""

    def __init__(self, label: str, enabled: bool = True):
        self.label, self.enabled, self.start = label, enabled, time.perf_counter()
        self._bar = None

    def __call__(self, done: int, total: int, extra: str = "") -> None:
        if not self.enabled:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=self.label, file=sys.stderr, leave=False,
                             dynamic_ncols=True)
        self._bar.total = total
        self._bar.n = done
        if extra:
            self._bar.set_postfix_str(extra, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _add_model_args(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    """Model flags; without ``defaults`` they stay None so a config file's values survive."""
    from .models import COMPUTE_DTYPES, DEVICES, QUANTIZATIONS

    def d(value):
        return value if defaults else None

    g = p.add_argument_group("model")
    g.add_argument("--model", default=d("demo"),
                   help="'demo' (embedded SmolLM2-135M), a Hugging Face hub id, or a local model directory "
                        "(default: demo)")
    g.add_argument("--quant", choices=QUANTIZATIONS, default=d("nf4"),
                   help="weights: nf4 = 4-bit NormalFloat via bitsandbytes, as the paper (default); int8; "
                        "bf16; fp32")
    g.add_argument("--device", choices=DEVICES, default=d("auto"),
                   help="auto = GPU(s) if present, sharded with accelerate, else CPU (default: auto)")
    g.add_argument("--compute-dtype", choices=COMPUTE_DTYPES, default=d("bfloat16"),
                   help="matmul dtype for nf4 (default: bfloat16, as the paper)")
    g.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    g.add_argument("--trust-remote-code", action="store_true", default=d(False),
                   help="allow the model's own Python code from the hub (off unless asked)")
    g.add_argument("--max-memory", default=None,
                   help="per-device caps for sharding, e.g. '0:20GiB,1:20GiB,cpu:64GiB'")


def _spec_from_args(args):
    from .models import ModelSpec

    return ModelSpec(model=args.model, quantization=args.quant, device=args.device,
                     compute_dtype=args.compute_dtype, revision=args.revision,
                     trust_remote_code=args.trust_remote_code, max_memory=args.max_memory)


def _load(spec, quiet: bool):
    from .models import load_model

    def report(fraction: float, message: str) -> None:
        if not quiet:
            print(f"[{fraction:4.0%}] {message}", file=sys.stderr)

    return load_model(spec, progress=report)


# --------------------------------------------------------------------------- scan

def format_curve(curve) -> str:
    """The layer curve as a fixed-width table (one block per set)."""
    cols = ["layer", "layer_name", "n", "true_mean", "true_std", "shuffled_mean", "gap",
            "p1_nn", "p1_csls", "p5_csls", "chance_p1"]
    heads = ["layer", "name", "n", "true cos", "std", "shuffled", "gap", "P@1 NN", "P@1 CSLS", "P@5 CSLS",
             "chance@1"]
    out = []
    for name, df in curve.groupby("set", sort=False):
        out.append(f"\n{name} set ({int(df['n'].iloc[0])} pairs)")
        table = df[cols].copy()
        table.columns = heads
        out.append(table.to_string(index=False, formatters={
            "true cos": "{:.5f}".format, "std": "{:.4f}".format, "shuffled": "{:.5f}".format,
            "gap": "{:+.5f}".format, "P@1 NN": "{:.3f}".format, "P@1 CSLS": "{:.3f}".format,
            "P@5 CSLS": "{:.3f}".format, "chance@1": "{:.3f}".format}))
    return "\n".join(out)


def cmd_scan(args) -> int:
    from . import alignment, pairs as pairs_mod
    from .files import write_csv, write_json
    from .models import resolve_layer

    trained, report = pairs_mod.read_pairs(args.pairs)
    sets = {"trained": trained}
    notes = report.lines()[1:]
    if args.control:
        control, creport = pairs_mod.read_pairs(args.control)
        sets["control"] = control
        notes += creport.lines()[1:] + [l for l in pairs_mod.check_leakage(trained, control).lines()
                                        if not l.startswith("no overlap")]
    for line in notes:
        print(f"note: {line}", file=sys.stderr)
    layers = parse_layers(args.layers)
    spec = _spec_from_args(args)
    lm = _load(spec, args.quiet)
    if layers is not None:
        layers = [resolve_layer(k, lm.facts.num_layers) for k in layers]
    bar = TerminalProgress("embedding words", enabled=not args.quiet)
    try:
        result = alignment.scan(lm.model, lm.tokenizer, sets, pooling=args.pooling, centering=args.center,
                                layers=layers, seed=args.seed, batch_size=args.batch_size, progress=bar)
    finally:
        bar.close()
    print(f"{lm.facts.name}: {lm.facts.num_layers} decoder blocks, hidden states 0..{lm.facts.num_layers} "
          f"(0 = input embeddings, {lm.facts.num_layers} = final output after the norm); pooling={args.pooling}, "
          f"centering={args.center}, shuffled baseline seed={args.seed}; scan {result.seconds:.2f} s")
    print(format_curve(result.curve))
    sugg = alignment.suggest_layers(result.curve)
    print(f"\nsuggested target layer: raw-cosine peak {sugg['raw_peak']} (the paper's rule), "
          f"gap peak {sugg['gap_peak']}, retrieval (P@1 CSLS) peak {sugg['retrieval_peak']}")
    flat = alignment.indistinguishable_layers(result.curve)
    if flat:
        print(f"warning: at layers {','.join(map(str, flat))} true pairs are no more similar than shuffled pairs "
              f"(gap < 0.02): a high cosine there is not evidence of alignment")
    if args.out:
        out = Path(args.out)
        write_csv(out / "curve.csv", result.curve)
        write_csv(out / "pairs.csv", result.pairs)
        write_json(out / "scan.json", {
            "model": lm.spec.to_dict(), "facts": lm.facts.__dict__, "pooling": args.pooling,
            "centering": args.center, "seed": args.seed, "pairs": args.pairs, "control": args.control,
            "seconds": result.seconds, "suggested": sugg,
            "layer_convention": "0 = input embeddings, k = output of decoder block k, "
                                f"{lm.facts.num_layers} = final output after the norm"})
        print(f"\nwrote {out / 'curve.csv'}, {out / 'pairs.csv'} and {out / 'scan.json'}")
    return 0


def cmd_prepare_demo(args) -> int:
    from .models import demo_dir, demo_ready, prepare_demo

    if demo_ready():
        print(f"demo model ready in {demo_dir()}")
        return 0
    prepare_demo(progress=lambda f, m: print(f"[{f:4.0%}] {m}", file=sys.stderr))
    print(f"demo model ready in {demo_dir()}")
    return 0


def cmd_info(args) -> int:
    lm = _load(_spec_from_args(args), args.quiet)
    width = max(len(k) for k, _ in lm.facts.rows())
    for label, value in lm.facts.rows():
        print(f"{label:<{width}}  {value}")
    return 0


# --------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    from .alignment import CENTERING
    from .embeddings import POOLINGS

    parser = argparse.ArgumentParser(
        prog="python -m tli_core",
        description="TLI Studio: Targeted Lexical Injection (arXiv 2506.15415) from the command line. "
                    "Layers are numbered 0 = input embeddings, k = output of decoder block k, "
                    "L = final output after the norm.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("scan", help="layer scan: translation-pair cosine, shuffled baseline, gap and "
                                    "retrieval precision for every layer",
                       description="Embed every word once (all layers from one batched forward) and print, "
                                   "per layer, the mean cosine of true translation pairs, the same for "
                                   "shuffled pairs, their gap, and precision@1/5 by nearest neighbour and CSLS.")
    p.add_argument("--pairs", required=True,
                   help="trained word pairs: CSV/TSV with a header swahili,english (or source,target), "
                        "JSON list of objects or {\"pairs\": [...]}, or JSONL")
    p.add_argument("--control", default=None, help="control word pairs, same formats; scored as a second set")
    p.add_argument("--pooling", choices=POOLINGS, default="mean",
                   help="mean = all attention-masked tokens, BOS included (the paper's, default); "
                        "mean_words = leave special tokens out of the average; mean_no_first = leave the "
                        "first token (BOS or first word piece) out; last = last token")
    p.add_argument("--center", nargs="?", const="joint", default="none", choices=CENTERING,
                   help="mean-centering correction before cosines: joint (the flag alone) removes the mean "
                        "of all words, language removes each language's mean (default: none)")
    p.add_argument("--layers", default=None, help="layers to scan, e.g. 0-5,30 (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffled-pair derangement (default: 0)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="words per forward (default: chosen from free memory)")
    p.add_argument("--out", default=None, help="directory for curve.csv, pairs.csv and scan.json")
    p.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    _add_model_args(p)
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("prepare-demo", help="convert the embedded demo model once (make run/test do this)")
    p.set_defaults(func=cmd_prepare_demo)

    p = sub.add_parser("info", help="load a model and print its facts (layers, dtypes, memory, BOS ...)")
    p.add_argument("--quiet", action="store_true")
    _add_model_args(p)
    p.set_defaults(func=cmd_info)

    from . import cli_train  # noqa: E402  (train/evaluate/compare/sweep/runs live there)

    cli_train.add_commands(sub, _add_model_args)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except TLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
