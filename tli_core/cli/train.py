"""``train``, ``evaluate`` and the dashboard's hidden worker entry points."""

from __future__ import annotations

import argparse
import dataclasses
import sys

import pandas as pd

from ..config import TLIConfig, read_config_file
from ..downstream import HUB_TASKS, LOCAL_TASKS, downstream_table
from ..errors import TLIError
from ..evidence import evidence_table, run_verdict
from ..jobs.runner import import_adapter, start_downstream, start_evaluation, start_replicates, start_run
from ..layers import parse_layers
from ..models import ModelSpec
from ..pairs import load_pairs
from ..protocols import PROTOCOLS
from ..runs import Run, default_runs_dir, load_run
from ..stats import format_stats
from ..util import parse_seeds
from ..worker import Stopped, downstream_run, evaluate_run, execute, exit_now, worker_main
from .common import MODEL_FLAGS, TerminalProgress, add_model_args, pooling_help, spec_from_args
from .grid import add_ray_flags, add_replicate_flags, finish_sweep

# TLIConfig field -> (flag, type); the help text comes from the dataclass itself.
TRAIN_FLAGS = {
    "trained_pairs": ("--pairs", str), "control_pairs": ("--control", str),
    "trained_subset": ("--trained-subset", int), "control_subset": ("--control-subset", int),
    "target_layers": ("--target-layers", str), "protocols": ("--protocols", str), "eval_layer": ("--eval-layer", str),
    "eval_pooling": ("--eval-pooling", str), "analysis_precision": ("--analysis-precision", str),
    "pooling": ("--pooling", str), "method": ("--method", str), "lora_r": ("--rank", int),
    "lora_alpha": ("--alpha", int), "lora_dropout": ("--lora-dropout", float),
    "target_modules": ("--target-modules", str),
    "adapter_blocks": ("--adapter-blocks", str), "loss": ("--loss", str),
    "negatives": ("--negatives", str), "margin": ("--margin", float),
    "temperature": ("--temperature", float), "learning_rate": ("--lr", float),
    "warmup_steps": ("--warmup-steps", int), "epochs": ("--epochs", int), "batch_size": ("--batch-size", int),
    "weight_decay": ("--weight-decay", float), "grad_clip": ("--grad-clip", str), "seed": ("--seed", int),
}


def parse_grad_clip(text: str) -> float | None:
    if text.strip().lower() in ("none", "off", "0"):
        return None
    try:
        return float(text)
    except ValueError:
        raise TLIError(f"--grad-clip must be a positive number or none (got {text!r})") from None


def config_from_args(args) -> TLIConfig:
    """TLIConfig from an optional config file, overridden by any flag given on the command line."""
    values = TLIConfig.from_dict(read_config_file(args.config) if args.config else {}).to_dict()
    model = values["model"]
    for dest, key in MODEL_FLAGS.items():
        if getattr(args, dest, None) is not None:
            model[key] = getattr(args, dest)
    values["model"] = ModelSpec.from_dict(model)
    for key, (flag, _) in TRAIN_FLAGS.items():
        v = getattr(args, flag.lstrip("-").replace("-", "_"))
        if v is None:
            continue
        if key == "target_layers":
            v = parse_layers(v)
        elif key in ("target_modules", "protocols"):
            v = [m.strip() for m in v.split(",") if m.strip()]
        elif key == "grad_clip":
            v = parse_grad_clip(v)
        values[key] = v
    if args.early_exit is not None:
        values["early_exit"] = args.early_exit
    if args.allow_overlap:
        values["allow_overlap"] = True
    return TLIConfig.from_dict(values)


def print_summary(run: Run, protocols: list[str] | None = None) -> None:
    """Before/after statistics under each evaluated protocol, with the baseline and retrieval beside them."""
    summary = run.summary()
    if not summary:
        return
    cols = ["group", "n", "mean_before", "std_before", "mean_after", "std_after", "change", "pct_change", "t", "p",
            "wilcoxon_p", "cohens_dz", "ci_low", "ci_high"]
    for name in protocols or run.protocols():
        s = run.summary(name) if name != "legacy" else summary
        if not s:
            continue
        table = pd.DataFrame(list(s["groups"].values()))
        print(f"\n[{name}] {s.get('protocol_description', '')}".rstrip())
        print(f"before/after at layer {s['eval_layer']} ({s['eval_layer_name']}), pooling={s['pooling']}, "
              f"analysis precision={s.get('precision', 'compute dtype')}:")
        for g, grp in s["groups"].items():
            print(f"  {g}: {run_verdict(grp).text}")
        if any(grp.get("specific") for grp in s["groups"].values()):
            evidence = evidence_table(s["groups"])
            with pd.option_context("display.width", 200, "display.max_colwidth", 70):
                print(evidence.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
        print("raw change (the paper's statistics):")
        print(format_stats(table[cols]))
        print("shuffled baseline and retrieval at that layer (before -> after):")
        for g in s["groups"].values():
            print(f"  {g['group']}: shuffled {g['shuffled_mean_before']:.4f} -> {g['shuffled_mean_after']:.4f}, "
                  f"gap {g['gap_before']:+.4f} -> {g['gap_after']:+.4f}, P@1 NN {g['p1_nn_before']:.3f} -> "
                  f"{g['p1_nn_after']:.3f}, P@1 CSLS {g['p1_csls_before']:.3f} -> {g['p1_csls_after']:.3f} "
                  f"(chance {g['chance_p1_before']:.3f})")
        diff = (s.get("merge_vs_attached") or {})
        for group, d in diff.items():
            k = d["layers"].index(s["eval_layer"])
            print(f"  merged vs attached adapter, {group}: per-pair |Δcos| at layer {s['eval_layer']} max "
                  f"{d['max_abs'][k]:.2e}, mean {d['mean_abs'][k]:.2e}; over all layers max {max(d['max_abs']):.2e}")


def cmd_train(args) -> int:
    config = config_from_args(args)
    seeds = parse_seeds(args.seeds)
    if (seeds and len(seeds) > 1) or args.placebo:  # replicates and/or a placebo: a sweep of this one setting
        sweep = start_replicates(config, seeds, args.placebo, args.runs_dir or default_runs_dir(), name=args.name,
                                 launch=False)
        print(f"{len(sweep.cells())} runs of this setting (seeds {', '.join(map(str, sweep.spec().seed_list))}"
              + (", each with its placebo" if args.placebo else "") + f"): sweep {sweep.id}", file=sys.stderr)
        return finish_sweep(sweep, args)
    if seeds:
        config = dataclasses.replace(config, seed=seeds[0])
    run, _, warnings = start_run(config, args.runs_dir or default_runs_dir(), name=args.name, launch=False)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"run directory: {run.path}", file=sys.stderr)
    bars = TerminalProgress(not args.quiet)
    try:
        status = execute(run, progress=bars)
    finally:
        bars.close()
    print(f"run {run.id}: {status.get('state')}" + (f" — {status['message']}" if status.get("message") else ""))
    print_summary(run)
    if status.get("state") == "failed":
        print(f"see {run.log_path}", file=sys.stderr)
        return 1
    return 0


def cmd_evaluate(args) -> int:
    run = load_run(args.run, args.runs_dir)
    protocols = [p.strip() for p in args.protocol.split(",") if p.strip()] if args.protocol else None
    start_evaluation(run, protocols, launch=False, weights=args.adapter)  # the checks; it runs here, in front
    bars = TerminalProgress(not args.quiet)
    try:
        evaluate_run(run, adapter=args.adapter, progress=bars, protocols=protocols)
    finally:
        bars.close()
    print(f"run {run.id}: evaluated; tables in {run.eval_dir}")
    print_summary(run, protocols)
    return 0


def cmd_import_adapter(args) -> int:
    spec = spec_from_args(args) if args.model else None
    trained = load_pairs(args.pairs) if args.pairs else None
    control = load_pairs(args.control) if args.control else None
    run, info = import_adapter(args.adapter_dir, spec, args.runs_dir or default_runs_dir(), trained, control,
                               name=args.name, target_layers=parse_layers(args.target_layers))
    acfg = info["adapter_config"]
    print(f"run {run.id}: adapter imported from {info['source']}")
    print(f"  adapter: r={acfg.get('r')}, alpha={acfg.get('lora_alpha')}, dropout={acfg.get('lora_dropout')}, "
          f"modules={acfg.get('target_modules')}, layers={acfg.get('layers_to_transform') or 'all'}, "
          f"base={acfg.get('base_model_name_or_path')}")
    print(f"  model: {run.config().model.label()}; every tensor fits its layer")
    print(f"evaluate it: python -m tli_core evaluate --run {run.id} --protocol paper-code,paper-text,studio"
          + (f" --runs-dir {args.runs_dir}" if args.runs_dir else ""))
    return 0


def cmd_downstream(args) -> int:
    run = load_run(args.run, args.runs_dir)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    start_downstream(run, tasks, args.fewshot, args.limit, launch=False, weights=args.weights)  # the checks
    bars = TerminalProgress(not args.quiet)
    try:
        summary = downstream_run(run, tasks, args.fewshot, args.limit, args.weights, progress=bars)
    finally:
        bars.close()
    print(f"run {run.id}: downstream benchmarks, {args.fewshot}-shot" + (f", limit {args.limit}" if args.limit else "")
          + f"; items in {run.path / 'downstream' / 'items.csv'}")
    print(downstream_table(summary).to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    return 0


def cmd_downstream_worker(args) -> int:
    run = Run(args.run_dir)
    try:
        downstream_run(run, [t for t in args.tasks.split(",") if t], args.fewshot, args.limit)
    except TLIError as exc:
        run.log(f"downstream benchmarks failed: {exc}")
        return 2
    except Stopped:  # recorded under "downstream" in status.json
        exit_now(0)
    return 0


def cmd_worker(args) -> int:
    exit_now(worker_main(args.run_dir))


def cmd_evaluate_worker(args) -> int:
    """Evaluate in a background process (the dashboard's Evaluate button)."""
    run = Run(args.run_dir)
    protocols = [p for p in (args.protocol or "").split(",") if p] or None
    try:
        evaluate_run(run, protocols=protocols)
    except TLIError as exc:
        run.log(f"evaluation failed: {exc}")
        return 2
    except Stopped:  # recorded under "evaluation" in status.json
        exit_now(0)
    return 0


def add_training_flags(p, skip=()) -> None:
    """Every TLIConfig setting as a flag (help text from the dataclass), plus --config and the model."""
    helps = TLIConfig.help()
    p.add_argument("--config", default=None, help="JSON/YAML file of TLIConfig settings (e.g. a run's config.json)")
    for key, (flag, typ) in TRAIN_FLAGS.items():
        if key not in skip:
            p.add_argument(flag, type=typ, default=None, help=helps[key] + (
                " (comma-separated)" if key in ("target_layers", "target_modules", "protocols") else "")
                + (f". {pooling_help()}" if key in ("pooling", "eval_pooling") else ""))
    p.add_argument("--early-exit", action=argparse.BooleanOptionalAction, default=None,
                   help=helps["early_exit"] + " (default: on)")
    p.add_argument("--allow-overlap", action="store_true", help=helps["allow_overlap"])
    p.add_argument("--runs-dir", default=None, help="where run directories go (default: ./runs or $TLI_RUNS_DIR)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_args(p, defaults=False)


def add_commands(sub) -> None:
    p = sub.add_parser("train", help="train TLI adapters and evaluate before/after (writes a run directory)",
                       description="Train LoRA adapters with the TLI loss on a target layer, then evaluate "
                                   "trained and control pairs before and after. Defaults are the paper's. "
                                   "Settings come from --config (JSON or YAML, the run's config.json format) "
                                   "and any flag given overrides the file.")
    add_training_flags(p)
    add_replicate_flags(p)
    add_ray_flags(p)
    p.add_argument("--name", default=None, help="run directory name (default: time, model, layer and rank); with "
                                                "--seeds or --placebo, the name of their sweep")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="re-evaluate a run from its saved adapter",
                       description="Load the base model fresh, attach the run's saved adapter, and recompute the "
                                   "before/after tables and statistics.")
    p.add_argument("--run", required=True, help="run directory (or its id under --runs-dir)")
    p.add_argument("--adapter", default=None, help="adapter inside the run, e.g. checkpoints/epoch_3 "
                                                   "(default: adapter/)")
    p.add_argument("--protocol", default=None,
                   help="evaluation protocol(s), comma-separated: " + ", ".join(
                       f"{name} ({p.describe()})" for name, p in PROTOCOLS.items()) + " (default: the run's)")
    p.add_argument("--runs-dir", default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("import-adapter", help="turn a PEFT LoRA adapter directory into a run that can be evaluated",
                       description="Check a PEFT LoRA adapter (e.g. the authors' published "
                                   "results/tli_lora_adapters/final) against a model's config -- every tensor's "
                                   "shape, no weights loaded -- and create a run holding a copy of it. Nothing is "
                                   "written if it does not fit.")
    p.add_argument("adapter_dir", help="directory with adapter_config.json and adapter_model.safetensors")
    p.add_argument("--pairs", default=None, help="trained pairs to evaluate (default: the shipped set)")
    p.add_argument("--control", default=None, help="control pairs to evaluate (default: the shipped set)")
    p.add_argument("--target-layers", default=None, help="the layer(s) the adapter was trained on (default: 2)")
    p.add_argument("--name", default=None, help="run name (default: time and adapter directory)")
    p.add_argument("--runs-dir", default=None)
    add_model_args(p, defaults=False)
    p.set_defaults(func=cmd_import_adapter)

    p = sub.add_parser("downstream", help="benchmarks before/after with lm-evaluation-harness (XNLI, XCOPA, ...)",
                       description="Evaluate the base model and the run's trained weights on lm-eval tasks with the "
                                   "same settings, store every item's correctness, and test the change on paired "
                                   "items (McNemar; paired bootstrap CI). Real tasks download their data from the "
                                   "Hugging Face hub; the local tasks " + ", ".join(LOCAL_TASKS) + " run offline. "
                                   "Suggested: " + "; ".join(f"{k} = {v}" for k, v in HUB_TASKS.items()))
    p.add_argument("--run", required=True, help="run id")
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    p.add_argument("--fewshot", type=int, default=0, help="few-shot examples per item (default: 0, zero-shot)")
    p.add_argument("--limit", type=int, default=None, help="items per task (default: all)")
    p.add_argument("--weights", default=None, help="trained weights inside the run (default: the final ones)")
    p.add_argument("--runs-dir", default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_downstream)

    p = sub.add_parser("downstream-worker", help=argparse.SUPPRESS)
    p.add_argument("run_dir")
    p.add_argument("--tasks", required=True)
    p.add_argument("--fewshot", type=int, default=0)
    p.add_argument("--limit", type=int, default=None)
    p.set_defaults(func=cmd_downstream_worker)

    p = sub.add_parser("worker", help=argparse.SUPPRESS)
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("evaluate-worker", help=argparse.SUPPRESS)
    p.add_argument("run_dir")
    p.add_argument("--protocol", default=None)
    p.set_defaults(func=cmd_evaluate_worker)
