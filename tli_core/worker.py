"""Execute a run directory: load, embed before, train, save, embed after, write statistics.

The same code runs inside ``python -m tli_core train`` (in the terminal) and in the worker
process the dashboard starts (``python -m tli_core worker RUN_DIR``). Everything it learns
goes into the run directory, so any reader can follow it, and a SIGTERM or a STOP file
ends training cleanly between two steps with the adapter saved.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import traceback

from peft import PeftModel

from .config import Resolved, TLIConfig, resolve
from .errors import TLIError
from .evaluation import embed_sets, evaluate, write_eval
from .files import write_json
from .jobs.process import JobLock, my_process_tag, now
from .models import load_model, model_shape, package_versions
from .pairs import check_leakage, load_pairs
from .progress import Progress, in_phase, no_progress
from .runs import Run
from .training import attach_lora, gradient_blocks, total_steps, train


def check_config(config: TLIConfig, trained=None, control=None) -> tuple[Resolved, list[str]]:
    """Every check that needs no compute: settings, layers and modules against the model's config,
    pair sets, leakage. Returns the resolved settings and the warnings."""
    trained = load_pairs(config.trained_pairs) if trained is None else trained
    control = load_pairs(config.control_pairs) if control is None else control
    resolved, warnings = resolve(config, model_shape(config.model), len(trained), len(control))
    leak = check_leakage(trained, control)
    if leak.leaks:
        detail = "; ".join(leak.lines())
        if not config.allow_overlap:
            raise TLIError(f"trained and control sets overlap ({detail}); the control set must be unseen. "
                           f"Remove the overlap, or accept it explicitly (--allow-overlap)")
        warnings.append(f"accepted overlap between trained and control: {detail}")
    return resolved, warnings


def subset(df, n: int | None, seed: int):
    if n is None or n >= len(df):
        return df.reset_index(drop=True)
    return df.sample(n=n, random_state=seed).reset_index(drop=True)


class _StopFlag:
    def __init__(self, run: Run):
        self.run, self.signalled = run, False

    def handle(self, signum, frame):
        self.signalled = True

    def __call__(self) -> bool:
        return self.signalled or self.run.stop_requested()


def execute(run: Run, progress: Progress = no_progress, lock_held: bool = False, lm=None) -> dict:
    """Train and evaluate ``run``; returns the final status. Never raises for user errors.

    ``lock_held``: the caller (a sweep) already holds the training lock. ``lm``: a loaded
    model to reuse (a sweep loads it once); its adapters are removed again afterwards.
    """
    lock = JobLock(run.path.parent)
    if not lock_held and not lock.acquire(f"run {run.id}, pid {os.getpid()}"):
        holder = JobLock(run.path.parent).holder()
        return run.update_status(state="failed", finished=now(),
                                 message=f"another training job holds the lock ({holder}); one job at a time")
    stop = _StopFlag(run)
    previous = signal.signal(signal.SIGTERM, stop.handle) if _main_thread() else None
    try:
        return _execute(run, progress, stop, lm)
    except TLIError as exc:
        run.log(f"error: {exc}")
        return run.update_status(state="failed", finished=now(), message=str(exc))
    except BaseException as exc:  # a bug, or KeyboardInterrupt: record it, then let it surface
        run.log("unexpected error:\n" + traceback.format_exc())
        run.update_status(state="failed", finished=now(), message=f"{type(exc).__name__}: {exc} (see train.log)")
        if isinstance(exc, Exception):
            return run.raw_status()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if not lock_held:
            lock.release()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _execute(run: Run, progress: Progress, stop: _StopFlag, lm=None) -> dict:
    config = run.config()
    run.update_status(state="running", phase="checking", pid=os.getpid(), process=my_process_tag(),
                      host=socket.gethostname(),
                      started=now(), versions=package_versions(), message="")
    run.log(f"run {run.id} started (pid {os.getpid()})")
    trained = subset(run.pairs("trained"), config.trained_subset, config.seed)
    control = subset(run.pairs("control"), config.control_subset, config.seed)
    resolved, warnings = check_config(config, trained, control)
    for w in warnings:
        run.log(f"warning: {w}")
    run.update_status(phase="loading model", warnings=warnings, eval_layer=resolved.eval_layer,
                      target_layers=resolved.target_layers, resolved=resolved.to_dict())
    if lm is None or lm.spec != config.model:
        progress("loading model", 0, 1, config.model.label())
        lm = load_model(config.model, progress=lambda phase, done, total, detail="": run.log(f"load: {detail}"))
    if stop():
        return run.update_status(state="stopped", phase="stopped", finished=now(),
                                 message="stopped before training started (no adapter)")
    write_json(run.path / "model_facts.json", lm.facts.__dict__)
    sets = {"trained": trained, "control": control}

    run.update_status(phase="embedding before")
    before = embed_sets(lm.model, lm.tokenizer, sets, config.pooling,
                        progress=in_phase(progress, "embedding before"))

    peft_model = attach_lora(lm.model, config, resolved)
    try:
        return _train_and_evaluate(run, config, resolved, lm, peft_model, sets, before, progress, stop)
    finally:
        peft_model.unload()  # the base model goes back exactly as it was (adapters removed, not merged)


def _train_and_evaluate(run: Run, config: TLIConfig, resolved: Resolved, lm, peft_model, sets, before,
                        progress: Progress, stop: _StopFlag) -> dict:
    trained = sets["trained"]
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    learn = resolved.learning_blocks
    run.log(f"LoRA: {trainable:,} trainable parameters; the loss on layer(s) {resolved.target_layers} reaches "
            f"adapters in blocks {learn[0]}..{learn[-1]} only"
            + (" (early exit: blocks beyond are not run)" if config.early_exit else ""))
    total = total_steps(len(trained), config.batch_size, config.epochs)
    run.update_status(phase="training", step=0, total_steps=total, trainable_parameters=trainable,
                      learning_blocks=learn)
    last_write = [0.0]
    grad_seen: dict = {}

    def on_step(m: dict) -> None:
        if m["step"] == 1:
            grad_seen["blocks"] = gradient_blocks(peft_model)
        run.append_metric(m)
        if time.monotonic() - last_write[0] > 0.5 or m["step"] == m["total_steps"]:
            run.update_status(step=m["step"], epoch=m["epoch"], loss=m["loss"], elapsed=m["elapsed"])
            last_write[0] = time.monotonic()
        progress("training", m["step"], m["total_steps"], f"loss {m['loss']:.4f}")

    def on_epoch(epoch: int, model) -> None:
        run.save_adapter(model, run.path / "checkpoints" / f"epoch_{epoch}")
        run.log(f"epoch {epoch} done; adapter saved to checkpoints/epoch_{epoch}")

    result = train(peft_model, lm.tokenizer, trained, config, resolved, on_step=on_step, on_epoch=on_epoch,
                   should_stop=stop)
    run.log(f"training {result.state} after {result.steps}/{result.total_steps} steps in {result.seconds:.1f} s"
            + (f": {result.message}" if result.message else ""))
    train_info = {"state": result.state, "steps": result.steps, "total_steps": result.total_steps,
                  "seconds": round(result.seconds, 3), "learning_blocks": learn,
                  "gradient_blocks": grad_seen.get("blocks"), "trainable_parameters": trainable}
    if result.state == "failed":
        return run.update_status(state="failed", phase="training", finished=now(), message=result.message,
                                 train=train_info)
    run.save_adapter(peft_model, run.adapter_dir)
    if result.state == "stopped":
        return run.update_status(state="stopped", phase="stopped", finished=now(), step=result.steps,
                                 message=f"{result.message}; adapter saved (evaluate it with "
                                         f"`python -m tli_core evaluate --run {run.path}`)", train=train_info)

    run.update_status(phase="embedding after", step=result.steps)
    after = embed_sets(peft_model, lm.tokenizer, sets, config.pooling,
                       progress=in_phase(progress, "embedding after"))
    _finish(run, resolved, sets, before, after, lm.facts, train_info)
    return run.update_status(state="done", phase="done", finished=now(), step=result.steps, message="")


def _finish(run: Run, resolved: Resolved, sets, before, after, facts, train_info: dict) -> dict:
    result = evaluate(sets, before, after, resolved.eval_layer, seed=0)
    write_eval(run, result)
    summary = dict(result.summary, run=run.id, model=facts.name, target_layers=resolved.target_layers,
                   train=train_info, finished=now())
    write_json(run.path / "summary.json", summary)
    g = summary["groups"]
    run.log("results at layer {} ({}): ".format(summary["eval_layer"], summary["eval_layer_name"]) + "; ".join(
        f"{k} {v['mean_before']:.4f} -> {v['mean_after']:.4f} ({v['pct_change']:+.2f} %, p={v['p']:.3g})"
        for k, v in g.items()))
    return summary


def evaluate_run(run: Run, adapter: str | None = None, progress: Progress = no_progress) -> dict:
    """Re-evaluate a run from its saved adapter on a freshly loaded base model.

    Holds the runs directory's job lock (a model load is as heavy as training's), and records
    its progress under ``evaluation`` in status.json so the dashboard can show it.
    """
    if run.is_active():
        raise TLIError(f"run {run.id} is still {run.status()['state']}; it evaluates itself when training ends")
    tag = my_process_tag()
    started = now()

    def record(**ev):
        run.update_status(evaluation=dict(ev, process=tag, started=started))

    lock = JobLock(run.path.parent)
    if not lock.acquire(f"evaluation of run {run.id}, pid {os.getpid()}"):
        message = f"another job holds the lock ({lock.holder()}); one job at a time"
        record(state="failed", finished=now(), message=message)
        raise TLIError(message)

    last = {"phase": None}

    def report(phase, done, total, extra=""):
        progress(phase, done, total, extra)
        if phase != last["phase"]:  # one status write per phase, not per batch
            last["phase"] = phase
            record(state="running", phase=phase)

    try:
        record(state="running", phase="loading the model")
        summary = _evaluate_run(run, adapter, report)
    except BaseException as exc:
        message = str(exc) if isinstance(exc, TLIError) else f"{type(exc).__name__}: {exc} (see train.log)"
        if not isinstance(exc, TLIError):
            run.log("unexpected error during evaluation:\n" + traceback.format_exc())
        record(state="failed", finished=now(), message=message)
        raise
    finally:
        lock.release()
    record(state="done", finished=now())
    return summary


def _evaluate_run(run: Run, adapter: str | None, progress: Progress) -> dict:
    config = run.config()
    adapter_dir = run.path / adapter if adapter else run.adapter_dir
    if not (adapter_dir / "adapter_config.json").is_file():
        raise TLIError(f"run {run.id} has no saved adapter at {adapter_dir}")
    trained = subset(run.pairs("trained"), config.trained_subset, config.seed)
    control = subset(run.pairs("control"), config.control_subset, config.seed)
    lm = load_model(config.model)
    resolved, _ = resolve(config, lm.facts.shape())
    sets = {"trained": trained, "control": control}
    before = embed_sets(lm.model, lm.tokenizer, sets, config.pooling, progress=in_phase(progress, "embedding before"))
    model = PeftModel.from_pretrained(lm.model, str(adapter_dir))
    model.eval()
    after = embed_sets(model, lm.tokenizer, sets, config.pooling, progress=in_phase(progress, "embedding after"))
    train_info = (run.raw_status().get("train") or {}) | {"evaluated_adapter": str(adapter_dir.relative_to(run.path))}
    summary = _finish(run, resolved, sets, before, after, lm.facts, train_info)
    if run.raw_status().get("state") == "stopped":
        run.update_status(message="stopped; evaluated from the saved adapter")
    return summary


def worker_main(run_dir: str) -> int:
    """Entry point of the dashboard's worker process."""
    run = Run(run_dir)
    status = execute(run)
    return 0 if status.get("state") in ("done", "stopped") else 1
