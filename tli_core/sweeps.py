"""Sweeps: a grid over target layer(s), method (LoRA at each rank, full fine-tuning) and placement, as a queue
of ordinary runs.

A sweep lives in ``<runs>/sweeps/<id>/``: ``sweep.json`` (the base TLIConfig and the grid),
``cells.json`` (each cell's settings, its run id and state) and ``status.json``. Each cell is
a normal run directory, trained one at a time by one process that holds the training lock
for the whole sweep and loads the model once. Started again, a sweep skips the cells that are
done, so it resumes after a restart. Results put every cell's control-set improvement in one
table, with p-values corrected across the grid (Benjamini–Hochberg or Holm).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .config import METHODS, TLIConfig
from .errors import OverlapError, TLIError
from .files import read_json, write_csv, write_json
from .jobs.jobdir import JobDir
from .jobs.process import JobLock, my_process_tag, now
from .models import load_model
from .pairs import load_pairs
from .runs import Run, check_run_name, create_run, default_runs_dir, job_path
from .stats import correct_pvalues
from .util import parse_int_ranges
from .worker import check_config, execute

SWEEPS = "sweeps"


@dataclass
class SweepSpec:
    base: TLIConfig
    target_layers: list[list[int]]
    ranks: list[int]
    placements: list[str] = field(default_factory=lambda: ["all"])
    correction: str = "bh"
    methods: list[str] = field(default_factory=lambda: ["lora"])

    def variants(self) -> list[tuple[str, int | None]]:
        """(method, rank) columns of the grid: LoRA at each rank, then full fine-tuning (which has no rank)."""
        return ([("lora", int(r)) for r in self.ranks] if "lora" in self.methods else []) + (
            [("full", None)] if "full" in self.methods else [])

    def cells(self) -> list[dict]:
        return [{"cell": i, "target_layers": list(t), "method": m, "rank": r, "placement": p}
                for i, (t, p, (m, r)) in enumerate(itertools.product(self.target_layers, self.placements,
                                                                     self.variants()))]

    def config_for(self, cell: dict) -> TLIConfig:
        method = cell.get("method", "lora")
        return dataclasses.replace(self.base, target_layers=list(cell["target_layers"]), method=method,
                                   lora_r=int(cell["rank"]) if method == "lora" else self.base.lora_r,
                                   adapter_blocks=cell["placement"])

    def to_dict(self) -> dict:
        return {"base": self.base.to_dict(), "target_layers": self.target_layers, "ranks": self.ranks,
                "placements": self.placements, "correction": self.correction, "methods": self.methods}

    @classmethod
    def from_dict(cls, d: dict) -> "SweepSpec":
        return cls(base=TLIConfig.from_dict(d["base"]), target_layers=[list(t) for t in d["target_layers"]],
                   ranks=[int(r) for r in d["ranks"]], placements=list(d["placements"]),
                   correction=d.get("correction", "bh"), methods=list(d.get("methods", ["lora"])))


def variant_label(method: str | None, rank) -> str:
    """'LoRA r=16' or 'full FT': a cell's method column, as tables and messages show it."""
    return "full FT" if method == "full" else f"LoRA r={int(rank)}"


class Sweep(JobDir):
    marker = "sweep.json"
    kind = "sweep"
    dead_state = "interrupted"

    def dead_message(self, status: dict, pid: str) -> str:
        return "the sweep process ended before the last cell; start it again to resume"

    @property
    def runs_dir(self) -> Path:
        return self.path.parent.parent

    def spec(self) -> SweepSpec:
        return SweepSpec.from_dict(read_json(self.path / "sweep.json"))

    def cells(self) -> list[dict]:
        return read_json(self.path / "cells.json", [])

    def save_cells(self, cells: list[dict]) -> None:
        write_json(self.path / "cells.json", cells)

    def request_stop(self) -> None:
        """Stop after the current cell's current step (its adapter is saved), then stop the queue."""
        super().request_stop()
        for cell in self.cells():
            if cell["state"] == "running" and cell["run"] and (self.runs_dir / cell["run"]).is_dir():
                Run(self.runs_dir / cell["run"]).request_stop()


def create_sweep(spec: SweepSpec, runs_dir: str | Path | None = None, trained=None, control=None,
                 name: str | None = None, pair_names: dict[str, str] | None = None) -> Sweep:
    """Write the sweep's directory (and the pair sets every cell will use); nothing runs yet.

    ``pair_names``: what the user calls the sets (an uploaded file's name); every cell's run records it, not the
    sweep's own copies. Default: the file names of ``spec.base``'s pair paths."""
    unknown = [m for m in spec.methods if m not in METHODS]
    if unknown or not spec.methods:
        raise TLIError(f"sweep methods must be among {', '.join(METHODS)} (got {', '.join(spec.methods) or 'none'})")
    if not spec.target_layers or not spec.placements or ("lora" in spec.methods and not spec.ranks):
        raise TLIError("a sweep needs at least one target layer setting, one placement, and one rank for LoRA")
    if any(r < 1 for r in spec.ranks):
        raise TLIError("every rank in a sweep must be at least 1")
    root = Path(runs_dir or default_runs_dir()) / SWEEPS
    sid = check_run_name(name, "sweep name") if name else time.strftime("%Y%m%d-%H%M%S") + f"-sweep{len(spec.cells())}"
    path = root / sid
    if path.exists():
        raise TLIError(f"sweep {sid} exists already")
    trained = load_pairs(spec.base.trained_pairs) if trained is None else trained
    control = load_pairs(spec.base.control_pairs) if control is None else control
    names = {role: (pair_names or {}).get(role) or Path(str(path)).name
             for role, path in (("trained", spec.base.trained_pairs), ("control", spec.base.control_pairs))}
    base = dataclasses.replace(spec.base, trained_pairs=str(path / "pairs_trained.csv"),
                               control_pairs=str(path / "pairs_control.csv"))
    spec = dataclasses.replace(spec, base=base)
    tmp = None
    try:  # all or nothing: written in a temporary directory, renamed into place
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{sid}.creating-", dir=root))
        write_csv(tmp / "pairs_trained.csv", trained)
        write_csv(tmp / "pairs_control.csv", control)
        write_json(tmp / "sweep.json", spec.to_dict())
        write_json(tmp / "cells.json", [dict(c, run=None, state="pending", reason="") for c in spec.cells()])
        write_json(tmp / "status.json", {"state": "queued", "created": now(), "updated": now(), "done": 0,
                                         "total": len(spec.cells()), "pair_names": names})
        os.rename(tmp, path)
        tmp = None
    except OSError as exc:
        raise TLIError(f"cannot create sweep {sid} in {root}: {exc.strerror or exc}") from None
    finally:  # whatever went wrong (a full disk, an interrupt), no half-written sweep stays behind
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return Sweep(path)


def load_sweep(sweep_id: str | Path, runs_dir: str | Path | None = None) -> Sweep:
    """The sweep called ``sweep_id`` inside ``<runs>/sweeps`` (a path only if it points there)."""
    return Sweep(job_path(sweep_id, Path(runs_dir or default_runs_dir()) / SWEEPS, "sweep", "sweep.json"))


def list_sweeps(runs_dir: str | Path | None = None) -> list[Sweep]:
    root = Path(runs_dir or default_runs_dir()) / SWEEPS
    if not root.is_dir():
        return []
    return [Sweep(p) for p in sorted(root.iterdir(), reverse=True) if (p / "sweep.json").is_file()]


def run_sweep(sweep: Sweep, progress=None) -> dict:
    """Train every cell that is not done yet, one after the other; returns the sweep's status."""
    lock = JobLock(sweep.runs_dir)
    if not lock.acquire(f"sweep {sweep.id}, pid {os.getpid()}"):
        return sweep.update_status(state="failed", message="another training job holds the lock; one at a time")
    try:
        spec = sweep.spec()
        trained, control = load_pairs(spec.base.trained_pairs), load_pairs(spec.base.control_pairs)
        sweep.update_status(state="running", pid=os.getpid(), process=my_process_tag(), started=now(), message="")
        lm = None
        cells = sweep.cells()
        for cell in cells:
            if cell["state"] in ("done", "invalid"):
                continue
            if sweep.stop_requested():
                return sweep.update_status(state="stopped", message="stopped between cells")
            config = spec.config_for(cell)
            try:
                check_config(config, trained, control)
            except OverlapError as exc:
                cell.update(state="invalid", reason=str(exc.with_control(
                    "the “Accept pairs that are in both sets” box on the Sweeps page, or --allow-overlap")))
                sweep.save_cells(cells)
                continue
            except TLIError as exc:
                cell.update(state="invalid", reason=str(exc))
                sweep.save_cells(cells)
                continue
            if lm is None:
                lm = load_model(config.model)
            names = sweep.status().get("pair_names")
            run = create_run(config, sweep.runs_dir, trained, control, name=f"{sweep.id}-c{cell['cell']}",
                             pair_names=names if isinstance(names, dict) else None)
            cell.update(run=run.id, state="running")
            sweep.save_cells(cells)
            if progress:
                progress(cell, cells)
            status = execute(run, lock_held=True, lm=lm)
            cell.update(state=status.get("state"), reason=status.get("message", ""))
            sweep.save_cells(cells)
            sweep.update_status(done=sum(c["state"] in ("done", "invalid") for c in cells))
            if sweep.stop_requested() or status.get("state") == "stopped":
                return sweep.update_status(state="stopped", message="stopped")
        finished = all(c["state"] in ("done", "invalid") for c in cells)
        invalid = [c for c in cells if c["state"] == "invalid"]
        if len(invalid) == len(cells):  # nothing could run: say why, not "done"
            return sweep.update_status(state="invalid", finished=now(),
                                       message=f"no cell could run: {invalid[0]['reason']}")
        return sweep.update_status(state="done" if finished else "failed", finished=now(),
                                   message=(f"{len(invalid)} of {len(cells)} cells could not run (see each cell's "
                                            f"reason)" if invalid else "") if finished else
                                   "some cells failed; start the sweep again to retry them")
    finally:
        lock.release()


def sweep_results(sweep: Sweep, correction: str | None = None) -> pd.DataFrame:
    """One row per cell: settings, state, trained/control change and p, corrected p, P@1 change."""
    spec = sweep.spec()
    correction = correction or spec.correction
    rows = []
    for cell in sweep.cells():
        row = {"cell": cell["cell"], "target layers": ",".join(map(str, cell["target_layers"])),
               "method": cell.get("method", "lora"), "rank": cell["rank"], "placement": cell["placement"],
               "state": cell["state"], "run": cell["run"],
               "reason": cell.get("reason", "")}
        summary = None
        if cell["run"] and (sweep.runs_dir / cell["run"] / "summary.json").is_file():
            summary = Run(sweep.runs_dir / cell["run"]).summary()
        for g in ("control", "trained"):
            s = (summary or {}).get("groups", {}).get(g, {})
            row[f"{g} change"] = s.get("change", np.nan)
            row[f"{g} % change"] = s.get("pct_change", np.nan)
            row[f"{g} p"] = s.get("p", np.nan)
            row[f"{g} P@1 change"] = (s["p1_csls_after"] - s["p1_csls_before"]) if s else np.nan
        rows.append(row)
    df = pd.DataFrame(rows)
    for g in ("control", "trained"):
        df[f"{g} p corrected"] = correct_pvalues(df[f"{g} p"].to_numpy(dtype=float), correction)
    df["significant"] = df["control p corrected"] < 0.05
    df.attrs["correction"] = correction
    return df


def best_cell(results: pd.DataFrame) -> int | None:
    """The cell with the largest control-set gain among the significant gains (else the largest change).

    A significant *decrease* is never "best": see :func:`significant_gain` for how to word the pick.
    """
    done = results.dropna(subset=["control change"])
    if done.empty:
        return None
    gains = done[done["significant"] & (done["control change"] > 0)]
    pool = gains if not gains.empty else done
    return int(pool.loc[pool["control change"].idxmax(), "cell"])


def significant_gain(results: pd.DataFrame, cell: int) -> bool:
    """Whether ``cell`` raised the control-set cosine significantly (after the sweep's correction)."""
    row = results[results["cell"] == cell].iloc[0]
    return bool(row["significant"] and row["control change"] > 0)


def parse_grid_layers(text: str) -> list[list[int]]:
    """'1,2,1+2' -> [[1], [2], [1, 2]]: commas separate settings, '+' joins layers trained together."""
    out = []
    for part in str(text).split(","):
        if part.strip():
            try:
                out.append(parse_int_ranges(part.replace("+", ","), "sweep layers", "1,2,1+2"))
            except TLIError:
                raise TLIError(f"cannot read sweep layers {text!r}: use e.g. 1,2,1+2") from None
    if not out:
        raise TLIError("no target layers given for the sweep")
    return out
