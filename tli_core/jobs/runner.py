"""Starting work: every page and CLI command that launches a job goes through here.

Each ``start_*`` does the same four things in the same order, and raises ``TLIError`` with a
message that says what to do: check the settings (nothing computed, nothing written), test
that no other job holds the runs directory, create the job's directory, launch its worker
process (or, for the CLI, hand the created job back to run in the foreground).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..config import Resolved, TLIConfig
from ..errors import TLIError
from ..runs import Run, active_runs, create_run, default_runs_dir
from ..sweeps import Sweep, SweepSpec, create_sweep
from ..worker import check_config
from .process import JobLock, spawn_worker


def busy_message(runs_dir: str | Path) -> str | None:
    """Why a new job cannot start now, or None if it can."""
    holder = JobLock(runs_dir).holder()
    if holder:
        return f"a job is already running ({holder}); wait for it or stop it on the Train page"
    active = active_runs(runs_dir)
    if active:
        return f"run {active[0].id} is {active[0].status()['state']}; wait for it or stop it first"
    return None


def _not_busy(runs_dir: Path) -> None:
    busy = busy_message(runs_dir)
    if busy:
        raise TLIError(busy)


def start_run(config: TLIConfig, runs_dir: str | Path | None = None, trained: pd.DataFrame | None = None,
              control: pd.DataFrame | None = None, name: str | None = None,
              launch: bool = True) -> tuple[Run, Resolved, list[str]]:
    """Check -> busy -> create -> launch a training run; returns (run, resolved settings, warnings).

    ``launch=False`` creates the run without starting a worker (the CLI runs it in the foreground).
    """
    runs_dir = Path(runs_dir or default_runs_dir())
    resolved, warnings = check_config(config, trained, control)
    _not_busy(runs_dir)
    run = create_run(config, runs_dir, trained, control, name=name)
    if launch:
        spawn_worker("worker", run.path, run.log_path)
    return run, resolved, warnings


def start_sweep(spec: SweepSpec, runs_dir: str | Path | None = None, trained: pd.DataFrame | None = None,
                control: pd.DataFrame | None = None, launch: bool = True) -> Sweep:
    """Check -> busy -> create -> launch a sweep (cells that cannot run are marked invalid when reached)."""
    runs_dir = Path(runs_dir or default_runs_dir())
    _not_busy(runs_dir)
    sweep = create_sweep(spec, runs_dir, trained, control)
    if launch:
        resume_sweep(sweep)
    return sweep


def resume_sweep(sweep: Sweep) -> None:
    """Start (or continue) a sweep's worker; finished cells are skipped."""
    _not_busy(sweep.runs_dir)
    spawn_worker("sweep-worker", sweep.path, sweep.path / "sweep.log")


def start_evaluation(run: Run) -> None:
    """Check -> busy -> launch a re-evaluation of a run's saved adapter in the background."""
    if run.is_active():
        raise TLIError(f"run {run.id} is still {run.status()['state']}; it evaluates itself when training ends")
    if run.is_evaluating():
        raise TLIError(f"run {run.id} is already being evaluated")
    if not run.has_adapter():
        raise TLIError(f"run {run.id} has no saved adapter to evaluate")
    _not_busy(run.path.parent)
    spawn_worker("evaluate-worker", run.path, run.log_path, pid_file="evaluate.pid")
