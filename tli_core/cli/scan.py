"""``scan`` (the layer scan), ``info`` (model facts) and ``prepare-demo``."""

from __future__ import annotations

import sys
from pathlib import Path

from .. import alignment
from ..alignment import CENTERING
from ..demo import demo_dir, demo_ready, prepare_demo
from ..embeddings import POOLINGS
from ..files import write_csv, write_json
from ..layers import CONVENTION, parse_layers, resolve_layer
from ..pairs import check_leakage, read_pairs
from ..precision import NOISE_LIMIT, PRECISIONS
from .common import TerminalProgress, add_model_args, load, pooling_help, spec_from_args


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


def precision_note(result) -> str:
    """One line on how far the per-pair numbers can be trusted."""
    if result.precision_report is None:
        line = ("\nanalysis precision: float32 on the model's own weights (per-pair cosines agree with a per-word "
                "float32 loop to 1e-5)")
        if result.conditioning is not None:
            line += (f"; 4-bit weights dequantized straight to float32 -- rounded to bf16 first they move a pair's "
                     f"cosine by up to {result.conditioning['max_abs_delta'].max():.2e}")
            if result.ill_conditioned_layers:
                line += (f"\nwarning: per-pair cosines at layers {','.join(map(str, result.ill_conditioned_layers))} "
                         f"depend on that rounding by more than {NOISE_LIMIT:g} (ill-conditioned); layer means are "
                         f"robust")
        return line
    r = result.precision_report
    worst = r.loc[r["max_abs_delta"].idxmax()]
    line = (f"\nanalysis precision: {result.precision}; a float32 recomputation ({alignment.check_scope(r)}) "
            f"moves a pair's cosine by up to {worst.max_abs_delta:.2e} (layer {int(worst.layer)})")
    if result.flagged_layers:
        line += (f"\nwarning: per-pair cosines at layers {','.join(map(str, result.flagged_layers))} differ from "
                 f"float32 by more than {NOISE_LIMIT:g}; use --analysis-precision float32 for word-level values")
    return line


def cmd_scan(args) -> int:
    trained, report = read_pairs(args.pairs)
    sets = {"trained": trained}
    notes = report.lines()[1:]
    if args.control:
        control, creport = read_pairs(args.control)
        sets["control"] = control
        notes += creport.lines()[1:] + [line for line in check_leakage(trained, control).lines()
                                        if not line.startswith("no overlap")]
    for line in notes:
        print(f"note: {line}", file=sys.stderr)
    layers = parse_layers(args.layers)
    lm = load(spec_from_args(args), args.quiet)
    if layers is not None:
        layers = [resolve_layer(k, lm.facts.num_layers) for k in layers]
    bar = TerminalProgress(enabled=not args.quiet)
    try:
        result = alignment.scan(lm.model, lm.tokenizer, sets, pooling=args.pooling, centering=args.center,
                                layers=layers, seed=args.seed, batch_size=args.batch_size, progress=bar,
                                precision=args.analysis_precision)
    finally:
        bar.close()
    print(f"{lm.facts.name}: {lm.facts.num_layers} decoder blocks, hidden states 0..{lm.facts.num_layers} "
          f"(0 = input embeddings, {lm.facts.num_layers} = final output after the norm); pooling={args.pooling}, "
          f"centering={args.center}, shuffled baseline seed={args.seed}, analysis precision={result.precision}; "
          f"scan {result.seconds:.2f} s ({result.stats.forwards} forwards)")
    print(format_curve(result.curve))
    print(precision_note(result))
    sugg = alignment.suggest_layers(result.curve, noise=alignment.layer_noise(result.precision_report),
                                    detail=result.details.get("trained"), held_out=args.held_out, seed=args.seed)
    lo, hi = sugg.get("gap_ci", (float("nan"), float("nan")))
    print(f"\nsuggested target layer: raw-cosine peak {sugg['raw_peak']} (the paper's rule), "
          f"largest gap {sugg['gap_peak']} (95% CI {lo:+.4f} .. {hi:+.4f}, headword bootstrap), retrieval "
          f"(P@1 CSLS) peak {sugg['retrieval_peak']}")
    for key, label in (("raw_peak", "raw cosine"), ("retrieval_peak", "retrieval")):
        tied = sugg["ties"][key]
        if len(tied) > 1:
            print(f"note: by {label}, layers {','.join(map(str, tied))} are tied within the measured noise; "
                  f"the earliest is suggested")
    others = [k for k in sugg["ties"]["gap_peak"] if k != sugg["gap_peak"]]
    if others:
        print(f"note: by gap, layers {','.join(map(str, others))} are not distinguishable from layer "
              f"{sugg['gap_peak']} (their difference's 95% CI reaches 0)")
    if "held_out" in sugg:
        h = sugg["held_out"]
        print(f"held-out choice: layer {h['layer']} chosen on {h['select_headwords']} headwords; on the other "
              f"{h['check_headwords']} its gap is {h['check_gap']:+.4f} (95% CI {h['check_ci'][0]:+.4f} .. "
              f"{h['check_ci'][1]:+.4f}), their own best layer {h['check_best']}"
              + ("" if h["confirmed"] else " -- the choice does not carry over"))
    else:
        print("note: a layer chosen here and evaluated on these same pairs is double-dipping; --held-out chooses on "
              "half of the headwords and checks on the other half")
    flat = alignment.indistinguishable_layers(result.curve)
    if flat:
        print(f"warning: at layers {','.join(map(str, flat))} true pairs are no more similar than shuffled pairs "
              f"(gap < 0.02): a high cosine there is not evidence of alignment")
    if args.out:
        out = Path(args.out)
        write_csv(out / "curve.csv", result.curve)
        write_csv(out / "pairs.csv", result.pairs)
        if result.precision_report is not None:
            write_csv(out / "precision.csv", result.precision_report)
        write_json(out / "scan.json", {
            "model": lm.spec.to_dict(), "facts": lm.facts.__dict__, "pooling": args.pooling,
            "centering": args.center, "seed": args.seed, "pairs": args.pairs, "control": args.control,
            "analysis_precision": result.precision, "flagged_layers": result.flagged_layers,
            "ill_conditioned_layers": result.ill_conditioned_layers,
            "weights": "4-bit weights dequantized straight to float32" if result.conditioning is not None else None,
            "precision_check": (alignment.check_scope(result.precision_report)
                                if result.precision_report is not None else None),
            "seconds": result.seconds,
            "suggested": {k: v for k, v in sugg.items() if k != "gap_bootstrap"},
            "gap_bootstrap": sugg.get("gap_bootstrap"),
            "layer_convention": CONVENTION.replace("L =", f"{lm.facts.num_layers} =")})
        print(f"\nwrote {out / 'curve.csv'}, {out / 'pairs.csv'} and {out / 'scan.json'}")
    return 0


def cmd_prepare_demo(args) -> int:
    if not demo_ready():
        prepare_demo(progress=lambda phase, done, total, detail="": print(
            f"[{done / (total or 100):4.0%}] {detail}", file=sys.stderr))
    print(f"demo model ready in {demo_dir()}")
    return 0


def cmd_info(args) -> int:
    lm = load(spec_from_args(args), args.quiet)
    width = max(len(k) for k, _ in lm.facts.rows())
    for label, value in lm.facts.rows():
        print(f"{label:<{width}}  {value}")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("scan", help="layer scan: translation-pair cosine, shuffled baseline, gap and "
                                    "retrieval precision for every layer",
                       description="Embed every word once (all layers from one batched forward) and print, "
                                   "per layer, the mean cosine of true translation pairs, the same for "
                                   "shuffled pairs, their gap, and precision@1/5 by nearest neighbour and CSLS.")
    p.add_argument("--pairs", required=True,
                   help="trained word pairs: CSV/TSV with a header swahili,english (or source,target), "
                        "JSON list of objects or {\"pairs\": [...]}, or JSONL")
    p.add_argument("--control", default=None, help="control word pairs, same formats; scored as a second set")
    p.add_argument("--pooling", choices=list(POOLINGS), default="mean", help=pooling_help() + " (default: mean)")
    p.add_argument("--center", nargs="?", const="joint", default="none", choices=CENTERING,
                   help="mean-centering correction before cosines: joint (the flag alone) removes the mean "
                        "of all words, language removes each language's mean (default: none)")
    p.add_argument("--layers", default=None, help="layers to scan, e.g. 0-5,30 (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffled-pair derangement (default: 0)")
    p.add_argument("--held-out", action="store_true",
                   help="choose the suggested layer on half of the Swahili headwords and check it on the other half "
                        "(a layer chosen and evaluated on the same pairs is double-dipping)")
    p.add_argument("--analysis-precision", choices=list(PRECISIONS), default="float32",
                   help="; ".join(f"{k} = {v}" for k, v in PRECISIONS.items()))
    p.add_argument("--batch-size", type=int, default=None,
                   help="words per forward (default: chosen from free memory)")
    p.add_argument("--out", default=None, help="directory for curve.csv, pairs.csv and scan.json")
    p.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    add_model_args(p)
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("prepare-demo", help="convert the embedded demo model once (make run/test do this)")
    p.set_defaults(func=cmd_prepare_demo)

    p = sub.add_parser("info", help="load a model and print its facts (layers, dtypes, memory, BOS ...)")
    p.add_argument("--quiet", action="store_true")
    add_model_args(p)
    p.set_defaults(func=cmd_info)
