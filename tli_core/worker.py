"""Execute a job directory: load, embed before, train, save, evaluate under each protocol, write statistics.

The same code runs inside ``python -m tli_core train`` (in the terminal) and in the worker
process the dashboard starts (``python -m tli_core worker RUN_DIR``). Everything it learns
goes into the run directory, so any reader can follow it, and a SIGTERM or a STOP file
ends the run cleanly: between two training steps (the adapter is saved) or between two
forwards of an embedding pass.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import socket
import time
import traceback

from peft import PeftModel

from .adapters import merged_adapter, strip_adapters
from .alignment import derangement, pair_index
from .config import Resolved, TLIConfig, resolve, total_steps
from .downstream import LOCAL_TASKS, item_table, paired_items, run_tasks, write_local_items
from .embeddings import SINK_POOLINGS, sink_note
from .errors import OverlapError, TLIError
from .evaluation import conditioning_of_sets, embed_sets, evaluate, merge_difference, write_eval
from .files import write_csv, write_json
from .jobs.process import JobLock, my_process_tag, now
from .jobs.stopping import NO_STOP, StopGuard, Stopped
from .models import LoadedModel, load_model, model_shape, package_versions
from .pairs import check_leakage, load_pairs
from .progress import Progress, no_progress
from .protocols import Protocol, get_protocol, resolve_eval_layer
from .runs import Run, remove_stale_temporaries
from .trained import is_adapter, trained_model
from .training import attach, gradient_blocks, train


def check_config(config: TLIConfig, trained=None, control=None) -> tuple[Resolved, list[str]]:
    """Every check that needs no compute: settings, layers and modules against the model's config,
    pair sets, leakage. Returns the resolved settings and the warnings."""
    trained = load_pairs(config.trained_pairs) if trained is None else trained
    control = load_pairs(config.control_pairs) if control is None else control
    resolved, warnings = resolve(config, model_shape(config.model), len(trained), len(control))
    leak = check_leakage(trained, control)
    if leak.leaks:
        detail = "; ".join(leak.leak_lines())
        if not config.allow_overlap:
            raise OverlapError(detail)
        warnings.append(f"accepted overlap between trained and control: {detail}")
    warnings += leak.warning_lines()
    return resolved, warnings


def subset(df, n: int | None, seed: int):
    if n is None or n >= len(df):
        return df.reset_index(drop=True)
    return df.sample(n=n, random_state=seed).reset_index(drop=True)


def _stoppable(progress: Progress, stop: StopGuard, phase: str) -> Progress:
    """``progress`` renamed to ``phase``, reported as started now (its time counts from here, not from its first
    forward's end); the phase is the one a stop is recorded in (and checked at each report)."""
    stop.phase = phase
    progress(phase, 0, None, "")

    def report(_phase: str, done: float, total: float | None, detail: str = "") -> None:
        stop.phase = phase
        progress(phase, done, total, detail)
        stop.check()
    return report


class RunProgress:
    """Every progress report of a run, also written into its status.json (at most twice a second, and at each
    new phase), with the seconds each finished phase took: what the dashboard's progress and ETA read."""

    def __init__(self, run: Run, downstream: Progress = no_progress):
        self.run, self.downstream = run, downstream
        self.phase, self.started, self.written = None, 0.0, 0.0
        self.times: dict[str, float] = {}

    def __call__(self, phase: str, done: float, total: float | None, detail: str = "") -> None:
        t = time.monotonic()
        new = phase != self.phase
        if new:
            self.close_phase(t)
            self.phase, self.started = phase, t
        if new or t - self.written > 0.5 or (total and done >= total):
            step = {"step": int(done)} if phase == "training" else {}  # one write: the step and its progress agree
            self.run.update_status(phase=phase, phase_times=self.times, **step, progress={
                "phase": phase, "done": done, "total": total, "detail": detail,
                "phase_seconds": round(t - self.started, 2)})
            self.written = t
        self.downstream(phase, done, total, detail)

    def close_phase(self, t: float | None = None) -> None:
        if self.phase is not None:
            self.times[self.phase] = round(self.times.get(self.phase, 0.0) + (t or time.monotonic()) - self.started,
                                           3)
            self.phase = None


def execute(run: Run, progress: Progress = no_progress, lock_held: bool = False, lm=None, load=None) -> dict:
    """Train and evaluate ``run``; returns the final status. Never raises for user errors.

    ``lock_held``: the caller (a sweep) already holds the training lock. ``lm``: a loaded
    model to reuse; its adapters are removed again afterwards. ``load(spec)``: how to load the
    model otherwise (a sweep's unit keeps one per process); the load is stoppable either way.
    """
    lock = JobLock(run.path.parent)
    if not lock_held and not lock.acquire(f"run {run.id}, pid {os.getpid()}"):
        holder = JobLock(run.path.parent).holder()
        return run.update_status(state="failed", finished=now(),
                                 message=f"another training job holds the lock ({holder}); one job at a time")
    if not lock_held:  # a sweep's units may run on other machines, whose pids cannot be checked from here
        remove_stale_temporaries(run.path.parent)  # left by a kill -9 mid-save, in this run or any other
    stop = StopGuard(run).__enter__()
    progress = RunProgress(run, progress)
    try:
        return _execute(run, progress, stop, lm, load)
    except Stopped as exc:
        message = (f"stopped during {exc}" + (" (weights saved; evaluate them from Runs or the CLI)"
                                              if run.has_weights() else " (no adapter)"))
        run.log(message)
        return _final(run, state="stopped", phase="stopped", stopped_in=str(exc), finished=now(), message=message)
    except TLIError as exc:
        run.log(f"error: {exc}")
        return _final(run, state="failed", finished=now(), message=str(exc))
    except OSError as exc:  # a full disk, a vanished directory: the user's machine, said in one line
        message = f"{exc.strerror or exc}" + (f": {exc.filename}" if getattr(exc, "filename", None) else "")
        run.log(f"error: {message}")
        return _final(run, state="failed", finished=now(), message=message)
    except BaseException as exc:  # a bug, or KeyboardInterrupt: record it, then let it surface
        run.log("unexpected error:\n" + traceback.format_exc())
        status = _final(run, state="failed", finished=now(), message=f"{type(exc).__name__}: {exc} (see train.log)")
        if isinstance(exc, Exception):
            return status
        raise
    finally:
        progress.close_phase()
        with contextlib.suppress(OSError):
            run.update_status(phase_times=progress.times)
        run.clear_stop()
        stop.__exit__(None, None, None)
        if not lock_held:
            lock.release()


def _final(run: Run, **changes) -> dict:
    """The run's last status, recorded however the disk lets us (``record_end``); returned either way (the CLI
    prints it)."""
    return run.record_end(**changes)


def training_pairs(config: TLIConfig, trained):
    """The pairs the loss sees: the trained set (TLI), or for a placebo run the same Swahili words each paired with
    an English word of the set that is none of its translations (a derangement drawn with the run's seed)."""
    if config.pairing != "deranged":
        return trained
    perm = derangement(len(trained), config.seed, pair_index(list(trained["swahili"]), list(trained["english"])))
    return trained.assign(english=trained["english"].to_numpy()[perm]).reset_index(drop=True)


def run_sets(run: Run, config: TLIConfig) -> dict:
    return {"trained": subset(run.pairs("trained"), config.trained_subset, config.seed),
            "control": subset(run.pairs("control"), config.control_subset, config.seed)}


def _execute(run: Run, progress: Progress, stop: StopGuard, lm=None, load=None) -> dict:
    config = run.config()
    run.update_status(state="running", phase="checking", pid=os.getpid(), process=my_process_tag(),
                      host=socket.gethostname(), started=now(), versions=package_versions(), message="")
    run.log(f"run {run.id} started (pid {os.getpid()})")
    sets = run_sets(run, config)
    resolved, warnings = check_config(config, sets["trained"], sets["control"])
    for w in warnings:
        run.log(f"warning: {w}")
    stop.check("checking")
    run.update_status(phase="loading model", warnings=warnings, eval_layer=resolved.eval_layer,
                      target_layers=resolved.target_layers, resolved=resolved.to_dict())
    if lm is None or lm.spec != config.model:
        def loading(phase, done, total, detail=""):
            run.log(f"load: {detail}")
            progress("loading model", done, total, detail)

        loading("loading model", 0, 100, config.model.label())
        with stop.interruptible("loading model"):  # a load is a Python loop over tensors: cut short at once
            lm = (load or load_model)(config.model, progress=loading)
    stop.check("loading model")
    write_json(run.path / "model_facts.json", lm.facts.__dict__)
    protocols = run_protocols(config)
    run.update_status(phase="embedding before")
    with stop.interruptible("embedding before"):  # a forward is cut short between two operations
        before = embed_sets(lm.model, lm.tokenizer, sets, _poolings(protocols, local=True),
                            config.analysis_precision, _stoppable(progress, stop, "embedding before"))
        conditioning = conditioning_of_sets(lm.model, lm.tokenizer, sets, before, config.analysis_precision,
                                            _stoppable(progress, stop, "checking the 4-bit dequantization"))
    trainable = None
    try:
        trainable = attach(lm.model, config, resolved)
        return _train_and_evaluate(run, config, resolved, lm, trainable, sets, before, protocols, progress, stop,
                                   conditioning)
    finally:
        if trainable is not None:
            trainable.close()  # the base model goes back exactly as it was (adapters removed / blocks restored)
        else:
            strip_adapters(lm.model)  # attaching failed half-way: take out whatever was injected


def run_protocols(config: TLIConfig) -> list[Protocol]:
    return [get_protocol(name, config.eval_layer, config.eval_pooling) for name in config.protocols]


def _poolings(protocols: list[Protocol], local: bool = True, merged: bool | None = None) -> list[str]:
    return list(dict.fromkeys(p.pooling for p in protocols if (p.quantization is None) == local
                              and (merged is None or p.merged == merged)))


def _train_and_evaluate(run: Run, config: TLIConfig, resolved: Resolved, lm, trainable, sets, before, protocols,
                        progress: Progress, stop: StopGuard, conditioning: dict | None = None) -> dict:
    trained = training_pairs(config, sets["trained"])
    if config.pairing == "deranged":
        write_csv(run.path / "pairs_placebo.csv", trained)
        run.log(f"placebo: the loss pairs each of the {len(trained)} Swahili words with an English word that is none "
                f"of its translations (pairs_placebo.csv); evaluation is on the true pairs")
    model = trainable.model
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    learn = resolved.learning_blocks
    what = "LoRA adapters in blocks" if trainable.kind == "lora" else "the weights of blocks"
    run.log(f"{trainable.kind}: {n_trainable:,} trainable parameters; the loss on layer(s) {resolved.target_layers} "
            f"reaches {what} {learn[0]}..{learn[-1]} only"
            + (" (early exit: blocks beyond are not run)" if config.early_exit else ""))
    weights_dir = run.adapter_dir if trainable.kind == "lora" else run.full_ft_dir
    total = total_steps(len(trained), config.batch_size, config.epochs)
    run.update_status(phase="training", step=0, total_steps=total, trainable_parameters=n_trainable,
                      learning_blocks=learn, method=trainable.kind)
    last_write = [0.0]
    grad_seen: dict = {}

    def on_step(m: dict) -> None:  # a step's metrics, when they reach the host (every few steps, in a burst)
        if m["step"] == 1:
            grad_seen["blocks"] = gradient_blocks(model)
        run.append_metric(m)
        last_loss[0] = f"loss {m['loss']:.4f}"
        if time.monotonic() - last_write[0] > 0.5 or m["step"] == m["total_steps"]:
            run.update_status(epoch=m["epoch"], loss=m["loss"], elapsed=m["elapsed"])
            last_write[0] = time.monotonic()

    def on_progress(step: int, total_steps: int) -> None:  # every step, as the host counts it: never a stale step
        progress("training", step, total_steps, last_loss[0])

    last_loss = [""]
    progress("training", 0, total, "")

    def on_epoch(epoch: int, _model) -> None:
        run.save_weights(trainable.write, run.path / "checkpoints" / f"epoch_{epoch}")
        run.log(f"epoch {epoch} done; trained weights saved to checkpoints/epoch_{epoch}")

    stop.phase = "training"
    result = train(model, lm.tokenizer, trained, config, resolved, on_step=on_step, on_epoch=on_epoch,
                   should_stop=stop, interruptible=stop.interruptible, on_progress=on_progress)
    run.log(f"training {result.state} after {result.steps}/{result.total_steps} steps in {result.seconds:.1f} s"
            + (f": {result.message}" if result.message else ""))
    train_info = {"state": result.state, "steps": result.steps, "total_steps": result.total_steps,
                  "seconds": round(result.seconds, 3), "learning_blocks": learn,
                  "gradient_blocks": grad_seen.get("blocks"), "trainable_parameters": n_trainable,
                  "method": trainable.kind}
    if result.state == "failed":
        return run.update_status(state="failed", phase="training", finished=now(), message=result.message,
                                 train=train_info)
    if result.state == "stopped" and result.steps == 0:
        return run.update_status(state="stopped", phase="stopped", stopped_in="training", finished=now(),
                                 train=train_info, message="stopped before the first training step (no adapter)")
    progress("saving the trained weights", 0, 1, "")
    stop.phase = "saving the trained weights"
    run.save_weights(trainable.write, weights_dir)  # never cut short: a stop now acts once the weights are saved
    if result.state == "stopped":
        return run.update_status(state="stopped", phase="stopped", stopped_in="training", finished=now(),
                                 step=result.steps,
                                 message=f"{result.message}; {trainable.kind} weights saved (evaluate them from the "
                                         f"Runs page, or `python -m tli_core evaluate --run {run.id}`)",
                                 train=train_info)
    stop.check()
    run.update_status(phase="embedding after", step=result.steps)
    evaluate_protocols(run, config, resolved, lm, model, sets, before, protocols, train_info,
                       _stopper(progress, stop), weights_dir, conditioning, stop)
    return run.update_status(state="done", phase="done", finished=now(), step=result.steps, message="")


def _stopper(progress: Progress, stop: StopGuard):
    return lambda phase: _stoppable(progress, stop, phase)


def evaluate_protocols(run: Run, config: TLIConfig, resolved: Resolved, lm: LoadedModel, tuned, sets, before,
                       protocols: list[Protocol], train_info: dict, progress_for, weights_dir,
                       conditioning: dict | None = None, stop: StopGuard | None = None) -> dict:
    """After-passes (attached, merged, FP4 base) for ``protocols``, their statistics, files and summary.

    ``tuned`` is the model with the trained weights: a PeftModel, or the base with fine-tuned blocks
    (there is no adapter to merge then: merged protocols use the same after-pass, and say so).
    A stop (``stop``) cuts the passes short; the protocols already written are kept, in the summary too.
    """
    stop = stop or NO_STOP
    precision = config.analysis_precision
    local = [p for p in protocols if p.quantization is None]
    attached_poolings = _poolings(local, local=True)  # merged protocols too: the merge is measured against it
    with stop.interruptible("embedding after"):
        after = embed_sets(tuned, lm.tokenizer, sets, attached_poolings, precision, progress_for("embedding after"))
    merged_after, merge_diff = {}, {}
    merged_poolings = _poolings(local, local=True, merged=True)
    has_adapter = isinstance(tuned, PeftModel)
    if merged_poolings and has_adapter:
        with stop.interruptible("merging the adapter"), merged_adapter(tuned):
            merged_after = embed_sets(tuned, lm.tokenizer, sets, merged_poolings, precision,
                                      progress_for("embedding after (adapter merged)"))
        merge_diff = {pooling: merge_difference(after[pooling], merged_after[pooling]) for pooling in merged_poolings}
    summaries = {}
    report = progress_for("evaluating")
    try:
        for i, p in enumerate(local):
            report("evaluating", i, len(local), p.name)
            layer = resolve_eval_layer(p.layer, resolved.num_layers, resolved.target_layers)
            after_p = merged_after[p.pooling] if p.merged and has_adapter else after[p.pooling]
            extra = {"merge_vs_attached": merge_diff.get(p.pooling)} if p.merged and has_adapter else {}
            if not has_adapter:
                extra = {"merged": False, "weights": "full", "protocol_description": p.describe("full")}
            if (conditioning or {}).get(p.pooling):
                extra["conditioning"] = conditioning[p.pooling]
            if p.pooling in SINK_POOLINGS:
                extra["sink"] = sink_note(lm.tokenizer)
                extra["protocol_description"] = f"{extra.get('protocol_description') or p.describe()} ({extra['sink']})"
            summaries[p.name] = _write_protocol(run, sets, before[p.pooling], after_p, layer, p, config.seed, extra,
                                                stop)
        for p in protocols:
            if p.quantization is not None:
                summaries[p.name] = _evaluate_on_other_base(run, config, resolved, lm, sets, p, progress_for,
                                                            weights_dir, stop)
    except Stopped:
        if summaries:  # what was evaluated before the stop stays readable (Compare, report)
            _finish(run, config, resolved, summaries, lm.facts, train_info)
        raise
    return _finish(run, config, resolved, summaries, lm.facts, train_info)


def _evaluate_on_other_base(run: Run, config, resolved, lm, sets, protocol: Protocol, progress_for,
                            weights_dir, stop: StopGuard) -> dict:
    """A protocol that loads the base differently (the authors' FP4): its own before and after passes."""
    spec = dataclasses.replace(config.model, quantization=protocol.quantization)
    progress_for(f"loading the {protocol.quantization} base")("loading model", 0, 1, "")
    other = None
    try:
        with stop.interruptible(f"loading the {protocol.quantization} base"):
            other = load_model(spec)
        precision = protocol.precision or config.analysis_precision
        with stop.interruptible(f"embedding ({protocol.quantization} base)"):
            before = embed_sets(other.model, other.tokenizer, sets, [protocol.pooling], precision,
                                progress_for(f"embedding before ({protocol.quantization} base)"))
            with trained_model(other.model, weights_dir,
                               merged=protocol.merged and is_adapter(weights_dir)) as tuned:
                after = embed_sets(tuned, other.tokenizer, sets, [protocol.pooling], precision,
                                   progress_for(f"embedding after ({protocol.quantization} base)"))
        layer = resolve_eval_layer(protocol.layer, resolved.num_layers, resolved.target_layers)
        extra = {"base_quantization": protocol.quantization}
        if not is_adapter(weights_dir):
            extra |= {"merged": False, "weights": "full", "protocol_description": protocol.describe("full")}
        return _write_protocol(run, sets, before[protocol.pooling], after[protocol.pooling], layer, protocol,
                               config.seed, extra, stop)
    finally:
        del other
        gc.collect()


def _write_protocol(run: Run, sets, before, after, layer: int, protocol: Protocol, seed: int, extra: dict,
                    stop: StopGuard | None = None) -> dict:
    stop = stop or NO_STOP
    with stop.interruptible(f"evaluating ({protocol.name})"):  # statistics and bootstraps: nothing written yet
        result = evaluate(sets, before, after, layer, protocol, seed=seed, extra=extra)
    write_eval(run.eval_dir, result)  # never cut short: a protocol's files are all written or not at all
    g = result.summary["groups"]
    run.log(f"[{protocol.name}] layer {layer} ({result.summary['eval_layer_name']}), pooling {protocol.pooling}, "
            f"{result.summary['precision']}: " + "; ".join(
                f"{k} {v['mean_before']:.4f} -> {v['mean_after']:.4f} ({v['pct_change']:+.2f} %, p={v['p']:.3g})"
                for k, v in g.items()))
    return result.summary


def _finish(run: Run, config: TLIConfig, resolved: Resolved, summaries: dict, facts, train_info: dict) -> dict:
    """The run-level summary: every evaluated protocol (kept from earlier evaluations too), the first headlines."""
    old = run.summary() or {}
    protocols = dict(old.get("protocols") or {})
    protocols.update(summaries)
    order = [name for name in config.protocols if name in protocols] + [n for n in protocols
                                                                        if n not in config.protocols]
    headline = protocols[order[0]]
    summary = dict(headline, run=run.id, model=facts.name, target_layers=resolved.target_layers,
                   headline=order[0], protocols={name: protocols[name] for name in order},
                   train=train_info, finished=now())
    write_json(run.path / "summary.json", summary)
    return summary


def side_job(run: Run, name: str, body, progress: Progress = no_progress, lock_held: bool = False, **record_extra):
    """Run ``body(report, stop)`` as the run's ``name`` job (evaluation, downstream): under the runs directory's job
    lock (a model load is as heavy as training's; ``lock_held``: a sweep's driver holds it for its units), its
    state and phase recorded under ``name`` in status.json so the dashboard can follow it, failures recorded
    before they surface. A SIGTERM or the run's STOP file ends it within seconds (``stop``: see
    ``jobs/stopping.py``), recorded as stopped in the phase it was in; ``Stopped`` then surfaces."""
    if run.is_active():
        raise TLIError(f"run {run.id} is still {run.status()['state']}; wait until its training ends")
    tag, started = my_process_tag(), now()

    def record(**job):
        run.update_status(**{name: dict(job, process=tag, started=started, **record_extra)})

    lock = JobLock(run.path.parent)
    if not lock_held and not lock.acquire(f"{name} of run {run.id}, pid {os.getpid()}"):
        message = f"another job holds the lock ({lock.holder()}); one job at a time"
        record(state="failed", finished=now(), message=message)
        raise TLIError(message)
    last = {"phase": None, "at": 0.0}
    stop = StopGuard(run, "loading the model")

    def report(phase, done, total, detail=""):
        stop.phase = phase
        progress(phase, done, total, detail)
        moment = time.monotonic()
        if phase != last["phase"] or moment - last["at"] > 2.0:  # a status write per phase and every 2 s at most
            last.update(phase=phase, at=moment)
            record(state="running", phase=phase, done=done, total=total, detail=detail)
        stop.check()

    try:
        with stop:
            record(state="running", phase="loading the model")
            result = body(report, stop)
    except Stopped as exc:
        run.log(f"{name} stopped during {exc}")
        with contextlib.suppress(OSError):
            record(state="stopped", finished=now(), stopped_in=str(exc), message=f"stopped during {exc}")
        raise
    except BaseException as exc:
        message = str(exc) if isinstance(exc, TLIError) else f"{type(exc).__name__}: {exc} (see train.log)"
        if not isinstance(exc, TLIError):
            run.log(f"unexpected error during {name}:\n" + traceback.format_exc())
        record(state="failed", finished=now(), message=message)
        raise
    finally:
        lock.release()
        with contextlib.suppress(OSError):
            run.clear_stop()
    record(state="done", finished=now())
    return result


def evaluate_run(run: Run, adapter: str | None = None, progress: Progress = no_progress,
                 protocols: list[str] | None = None) -> dict:
    """Re-evaluate a run from its saved weights on a freshly loaded base model (a side job: ``evaluation``)."""
    adapter_dir = run.weights_path(adapter)
    config = run.config()
    if protocols:
        config = dataclasses.replace(config, protocols=list(protocols))
    return side_job(run, "evaluation", lambda report, stop: _evaluate_run(run, config, adapter_dir, report, stop),
                    progress, protocols=config.protocols)


def downstream_run(run: Run, tasks: list[str], num_fewshot: int = 0, limit: int | None = None,
                   weights: str | None = None, progress: Progress = no_progress, lock_held: bool = False,
                   lm: LoadedModel | None = None) -> dict:
    """lm-eval benchmarks on the base model and on the run's trained weights, same settings; paired item tests.

    Writes ``downstream/summary.json`` (per task: accuracies with CIs, McNemar's p, the paired bootstrap CI
    of the change) and ``downstream/items.csv`` (every item's correctness under both models).
    """
    if not tasks:
        raise TLIError("no downstream task given")
    weights_dir = run.weights_path(weights)
    config = run.config()
    settings = {"tasks": list(tasks), "num_fewshot": int(num_fewshot), "limit": limit,
                "weights": str(weights_dir.relative_to(run.path))}

    local = [t for t in tasks if t in LOCAL_TASKS]
    items_dir, items_info = None, None
    if local:  # the local tasks' items come from this run's own control set, never the shipped one
        items_dir = run.path / "downstream" / "task_items"
        items_info = write_local_items(items_dir, run.pairs("control"), run.pairs("trained"))
        settings["local_items"] = items_info

    def body(report, stop):
        with stop.interruptible("loading the model"):  # benchmarks are cut short at once: nothing is written yet
            model = lm if lm is not None and lm.spec == config.model else load_model(config.model)
            stop.phase = "benchmarks (base model)"
            base = run_tasks(model.model, model.tokenizer, tasks, num_fewshot, limit, seed=config.seed,
                             progress=report, phase="base model", items=items_dir)
            stop.phase = "benchmarks (tuned model)"
            with trained_model(model.model, weights_dir) as tuned:
                after = run_tasks(tuned, model.tokenizer, tasks, num_fewshot, limit, seed=config.seed,
                                  progress=report, phase="tuned model", items=items_dir)
        results = {t: paired_items(base[t], after[t], seed=config.seed) for t in tasks}
        chance = {t: base[t].chance for t in tasks if base[t].chance is not None}
        summary = {**settings, "model": model.facts.name, "finished": now(), "results": results, "chance": chance,
                   "test": "McNemar's exact test on the items one model gets right and the other wrong; paired "
                           "bootstrap 95% CI of the accuracy change"}
        write_csv(run.path / "downstream" / "items.csv", item_table(base, after))
        write_json(run.path / "downstream" / "summary.json", summary)
        for t, r in results.items():
            run.log(f"[downstream] {t}: {r['acc_base']:.3f} -> {r['acc_tuned']:.3f} (n={r['n']}, "
                    f"McNemar p={r['p_mcnemar']:.3g})")
        return summary

    return side_job(run, "downstream", body, progress, lock_held=lock_held, **settings)


def _evaluate_run(run: Run, config: TLIConfig, adapter_dir, progress: Progress, stop: StopGuard = NO_STOP) -> dict:
    sets = run_sets(run, config)
    with stop.interruptible("loading the model"):
        lm = load_model(config.model)
    resolved, _ = resolve(config, lm.facts.shape())
    protocols = run_protocols(config)

    def progress_for(phase):
        def report(_phase, done, total, detail=""):
            progress(phase, done, total, detail)
            stop.phase = phase  # the phase a stop is recorded in
        return report

    with stop.interruptible("embedding before"):
        before = embed_sets(lm.model, lm.tokenizer, sets, _poolings(protocols, local=True),
                            config.analysis_precision, progress_for("embedding before"))
        conditioning = conditioning_of_sets(lm.model, lm.tokenizer, sets, before, config.analysis_precision,
                                            progress_for("checking the 4-bit dequantization"))
    with trained_model(lm.model, adapter_dir) as tuned:
        train_info = (run.raw_status().get("train") or {}) | {
            "evaluated_adapter": str(adapter_dir.relative_to(run.path))}
        summary = evaluate_protocols(run, config, resolved, lm, tuned, sets, before, protocols, train_info,
                                     progress_for, adapter_dir, conditioning, stop)
    if run.raw_status().get("state") == "stopped":
        run.update_status(message="stopped; evaluated from the saved adapter")
    return summary


def worker_main(run_dir: str) -> int:
    """Entry point of the dashboard's worker process (``__main__`` installed the early SIGTERM handler)."""
    run = Run(run_dir)
    status = execute(run)
    return 0 if status.get("state") in ("done", "stopped") else 1


def exit_now(code: int) -> None:
    """End a worker process at once, its files written and closed: tearing down torch and the libraries' modules
    takes seconds on a busy machine, and a stopped job would only seem to linger for them."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
