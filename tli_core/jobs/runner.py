"""Starting work: every page and CLI command that launches a job goes through here.

Each ``start_*`` does the same four things in the same order, and raises ``TLIError`` with a
message that says what to do: check the settings (nothing computed, nothing written), test
that no other job holds the runs directory, create the job's directory, launch its worker
process (or, for the CLI, hand the created job back to run in the foreground).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pandas as pd

from ..adapters import check_adapter, read_adapter_config
from ..config import Resolved, TLIConfig, resolve
from ..downstream import check_tasks
from ..errors import OverlapError, TLIError
from ..grid import end_orphans
from ..models import ModelSpec, model_shape
from ..pairs import check_leakage, load_pairs
from ..protocols import get_protocol
from ..runs import Run, active_runs, check_run_name, create_run, default_runs_dir
from ..sweeps import Sweep, SweepSpec, create_sweep
from ..worker import check_config
from .process import JobLock, LaunchLock, mark_starting, now, process_alive, spawn_worker, starting_worker


def busy_message(runs_dir: str | Path) -> str | None:
    """Why a new job cannot start now, or None if it can."""
    holder = JobLock(runs_dir).holder()
    if holder and holder.startswith("sweep "):  # refused, not queued: see grid.py on why jobs never share a GPU
        return f"a sweep holds this runs directory's machine ({holder}); wait for it or stop it on the Sweeps page"
    if holder:
        return f"a job is already running ({holder}); wait for it or stop it on the Train page"
    starting = starting_worker(runs_dir)
    if starting:
        return f"a job is starting ({starting}); wait for it or stop it on the Train page"
    active = active_runs(runs_dir)
    if active:
        return f"run {active[0].id} is {active[0].status()['state']}; wait for it or stop it first"
    return None


def _not_busy(runs_dir: Path) -> None:
    busy = busy_message(runs_dir)
    if busy:
        raise TLIError(busy)


def _launch(job: str, command: str, target: Path, log_path: Path, runs_dir: Path, **kw) -> None:
    """Start the worker and mark the runs directory busy until it holds the JobLock (inside a LaunchLock)."""
    mark_starting(runs_dir, spawn_worker(command, target, log_path, **kw), job)


def start_run(config: TLIConfig, runs_dir: str | Path | None = None, trained: pd.DataFrame | None = None,
              control: pd.DataFrame | None = None, name: str | None = None, launch: bool = True,
              pair_names: dict[str, str] | None = None) -> tuple[Run, Resolved, list[str]]:
    """Check -> busy -> create -> launch a training run; returns (run, resolved settings, warnings).

    ``launch=False`` creates the run without starting a worker (the CLI runs it in the foreground).
    """
    runs_dir = Path(runs_dir or default_runs_dir())
    if name:
        check_run_name(name)
    resolved, warnings = check_config(config, trained, control)
    with LaunchLock(runs_dir):  # the check and the creation are one step for every launcher of this directory
        _not_busy(runs_dir)
        run = create_run(config, runs_dir, trained, control, name=name, pair_names=pair_names)
        if launch:
            _launch(f"run {run.id}", "worker", run.path, run.log_path, runs_dir)
    return run, resolved, warnings


def start_sweep(spec: SweepSpec, runs_dir: str | Path | None = None, trained: pd.DataFrame | None = None,
                control: pd.DataFrame | None = None, launch: bool = True,
                pair_names: dict[str, str] | None = None, name: str | None = None, address: str | None = None,
                parallel: int | None = None) -> Sweep:
    """Check -> busy -> create -> launch a sweep on Ray (cells that cannot run are marked invalid when reached).

    ``address``: an existing Ray cluster (None: $RAY_ADDRESS, else a local runtime); ``parallel``: units at a time
    at most. Both are remembered, so Resume runs the sweep where it ran."""
    runs_dir = Path(runs_dir or default_runs_dir())
    trained = load_pairs(spec.base.trained_pairs) if trained is None else trained
    control = load_pairs(spec.base.control_pairs) if control is None else control
    leak = check_leakage(trained, control)  # the same for every cell: refused now, not cell by cell
    if leak.leaks and not spec.base.allow_overlap:
        raise OverlapError("; ".join(leak.leak_lines()))
    if parallel is not None and int(parallel) < 1:
        raise TLIError("units at a time (parallel) must be at least 1")
    if spec.tasks:
        check_tasks(list(spec.tasks))
    with LaunchLock(runs_dir):
        _not_busy(runs_dir)
        sweep = create_sweep(spec, runs_dir, trained, control, pair_names=pair_names, name=name)
        if address or parallel:
            sweep.update_status(ray_address_asked=address or None, parallel=parallel)
        if launch:
            resume_sweep(sweep)
    return sweep


def start_replicates(config: TLIConfig, seeds: list[int] | None = None, placebo: bool = False,
                     runs_dir: str | Path | None = None, trained: pd.DataFrame | None = None,
                     control: pd.DataFrame | None = None, launch: bool = True,
                     pair_names: dict[str, str] | None = None, name: str | None = None, address: str | None = None,
                     parallel: int | None = None) -> Sweep:
    """One setting trained once per seed (and, with ``placebo``, its placebo per seed): a sweep of one cell, so the
    result is judged against seed-to-seed variation and the placebo (``evidence.replicated``)."""
    check_config(config, trained, control)
    spec = SweepSpec(base=config, target_layers=[list(config.target_layers)], ranks=[int(config.lora_r)],
                     placements=[str(config.adapter_blocks)], methods=[config.method], seeds=seeds, placebo=placebo)
    return start_sweep(spec, runs_dir, trained, control, launch, pair_names, name, address, parallel)


def _wait_for_dead_driver(sweep: Sweep, seconds: float = 15.0) -> None:
    """A driver that has just died can hold the runs directory's lock a moment longer (the OS closes a killed
    process's files only once its last thread has exited, which on a busy machine takes a while): wait for that,
    never for a live driver."""
    lock, mine = JobLock(sweep.runs_dir), f"sweep {sweep.id},"
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        holder = lock.holder()
        if not holder or not holder.startswith(mine) or process_alive(sweep.raw_status().get("process")):
            return
        time.sleep(0.1)


def resume_sweep(sweep: Sweep) -> None:
    """Start (or continue) a sweep's driver on Ray, where it was asked to run; finished units are skipped."""
    end_orphans(sweep)  # a killed driver's units may outlive it by seconds: they are ended, then rerun
    _wait_for_dead_driver(sweep)
    st = sweep.raw_status()
    args = (["--ray-address", str(st["ray_address_asked"])] if st.get("ray_address_asked") else []) + (
        ["--parallel", str(int(st["parallel"]))] if st.get("parallel") else [])
    with LaunchLock(sweep.runs_dir):
        _not_busy(sweep.runs_dir)
        sweep.clear_stop()  # an earlier session's stop; one asked from now on reaches the driver, even while it starts
        _launch(f"sweep {sweep.id}", "sweep-worker", sweep.path, sweep.path / "sweep.log", sweep.runs_dir,
                extra_args=args or None)


def start_downstream(run: Run, tasks: list[str], num_fewshot: int = 0, limit: int | None = None,
                     launch: bool = True, weights: str | None = None) -> None:
    """Check -> busy -> launch lm-eval benchmarks (base and tuned) for a run's saved weights, in the background.

    ``launch=False`` only checks (the CLI then runs the benchmarks in the foreground, on ``weights`` if given).
    """
    if not tasks:
        raise TLIError("pick at least one task")
    unknown = [t for t in tasks if not str(t).replace("_", "").replace("-", "").isalnum()]
    if unknown:
        raise TLIError(f"not a task name: {', '.join(unknown)}")
    if num_fewshot < 0 or (limit is not None and limit < 1):
        raise TLIError("few-shot count must be 0 or more, and the limit at least 1")
    if run.is_active():
        raise TLIError(f"run {run.id} is still {run.status()['state']}; wait until its training ends")
    if run.side_job("downstream").get("state") == "running":
        raise TLIError(f"run {run.id} is already being benchmarked")
    if weights is None and not run.has_weights():
        raise TLIError(f"run {run.id} has no trained weights to benchmark")
    check_tasks(tasks)  # a typo is refused here, not recorded as the run's failed benchmarks after a model load
    args = ["--tasks", ",".join(tasks), "--fewshot", str(int(num_fewshot))]
    with LaunchLock(run.path.parent):
        _not_busy(run.path.parent)
        if launch:
            _launch(f"benchmarks of run {run.id}", "downstream-worker", run.path, run.log_path, run.path.parent,
                    pid_file="downstream.pid",
                    extra_args=args + (["--limit", str(int(limit))] if limit else []))


def start_evaluation(run: Run, protocols: list[str] | None = None, launch: bool = True,
                     weights: str | None = None) -> None:
    """Check -> busy -> launch a re-evaluation of a run's saved adapter in the background.

    ``launch=False`` only checks (the CLI then evaluates in the foreground, on ``weights`` if given).
    """
    for name in protocols or []:
        get_protocol(name)
    if run.is_active():
        raise TLIError(f"run {run.id} is still {run.status()['state']}; it evaluates itself when training ends")
    if run.is_evaluating():
        raise TLIError(f"run {run.id} is already being evaluated")
    if weights is None and not run.has_weights():
        raise TLIError(f"run {run.id} has no saved weights to evaluate")
    with LaunchLock(run.path.parent):
        _not_busy(run.path.parent)
        if launch:
            _launch(f"evaluation of run {run.id}", "evaluate-worker", run.path, run.log_path, run.path.parent,
                    pid_file="evaluate.pid",
                    extra_args=["--protocol", ",".join(protocols)] if protocols else None)


def import_adapter(adapter_dir: str | Path, spec: ModelSpec | None = None, runs_dir: str | Path | None = None,
                   trained: pd.DataFrame | None = None, control: pd.DataFrame | None = None, name: str | None = None,
                   target_layers: list[int] | None = None) -> tuple[Run, dict]:
    """Turn any PEFT LoRA directory (e.g. the authors' published adapters) into a run that can be evaluated.

    The adapter is checked against the model's config (tensor shapes, no weights loaded) before
    anything is written; an adapter that does not fit is refused with one line. The run records
    the adapter's own config; its training settings are unknown (target layer: the paper's 2
    unless given).
    """
    adapter_dir = Path(adapter_dir).expanduser()
    acfg = read_adapter_config(adapter_dir)
    spec = spec or ModelSpec(model=acfg.get("base_model_name_or_path") or "demo")
    shape = model_shape(spec)
    if shape.linears is None:
        raise TLIError(f"cannot check an adapter against {spec.model!r} without loading it; load the model once "
                       f"on the Model page, then import")
    check_adapter(adapter_dir, shape.linears)
    layers = acfg.get("layers_to_transform")
    layers = [layers] if isinstance(layers, int) else layers
    modules = acfg.get("target_modules")
    modules = sorted(modules) if isinstance(modules, (list, tuple, set)) else None
    config = TLIConfig(model=spec, lora_r=int(acfg["r"]), lora_alpha=acfg.get("lora_alpha") or int(acfg["r"]),
                       lora_dropout=float(acfg.get("lora_dropout") or 0.0), target_modules=modules,
                       adapter_blocks=",".join(str(int(b) + 1) for b in layers) if layers else "all",
                       target_layers=list(target_layers or [2]))
    trained = load_pairs(config.trained_pairs) if trained is None else trained
    control = load_pairs(config.control_pairs) if control is None else control
    resolve(config, shape, len(trained), len(control))
    info = {"source": str(adapter_dir.resolve()), "adapter_config": acfg, "imported": now()}
    slug = "imported-" + (re.sub(r"[^A-Za-z0-9]+", "-", adapter_dir.resolve().name).strip("-")[:40] or "adapter")
    run = create_run(config, runs_dir or default_runs_dir(), trained, control, name=name, slug=slug,
                     status={"state": "imported", "phase": "imported", "import": info,
                             "message": f"adapter imported from {adapter_dir.resolve()}; not evaluated yet"},
                     adapter_from=adapter_dir)
    return run, info
