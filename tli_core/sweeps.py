"""Sweeps: a grid over target layer(s), method (LoRA at each rank, full fine-tuning), placement and seeds, with a
placebo arm, where every unit is an ordinary run.

A sweep lives in ``<runs>/sweeps/<id>/``: ``sweep.json`` (the base TLIConfig and the grid, a plain
description), ``cells.json`` (one entry per *unit*: a cell's settings x seed x arm, with its run id
and state) and ``status.json``. A *cell* is one setting of the grid; its units are the seeds of TLI
and, when asked, of the placebo (same settings and seed, deranged pairs). Units run on Ray
(``grid.py``): several at a time on one machine, or on a cluster. Results aggregate a cell's units
(``evidence.replicated``): the specific effect over seeds, the placebo contrast, and p-values
corrected across cells (Benjamini–Hochberg or Holm); only a cell whose effect is specific,
significant after correction, beyond seed noise and beyond its placebo earns a star.
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
from .downstream import downstream_table
from .errors import TLIError
from .evidence import ALPHA, Outcome, Verdict, judge, replicated
from .files import read_json_checked, write_csv, write_json
from .jobs.jobdir import JobDir
from .jobs.process import now
from .pairs import load_pairs
from .runs import Run, check_run_name, default_runs_dir, job_path
from .schema import SWEEP_STATUS, record_problem, units_problem, unreadable
from .stats import CORRECTIONS, correct_pvalues
from .util import default_threads, parse_int_ranges

SWEEPS = "sweeps"


ARMS = ("tli", "placebo")


@dataclass
class SweepSpec:
    """The grid, as data: what varies, over which seeds, with or without a placebo arm (and benchmarks)."""

    base: TLIConfig
    target_layers: list[list[int]]
    ranks: list[int]
    placements: list[str] = field(default_factory=lambda: ["all"])
    correction: str = "bh"
    methods: list[str] = field(default_factory=lambda: ["lora"])
    seeds: list[int] | None = None  # None: the base config's seed alone
    placebo: bool = False  # a placebo unit beside every TLI unit (same settings and seed, deranged pairs)
    tasks: list[str] = field(default_factory=list)  # lm-eval benchmarks run inside every unit (before/after)
    fewshot: int = 0
    limit: int | None = None
    threads_per_cell: int | None = None  # CPU threads of one unit (fixed at creation: results do not depend on
    #                                       how many units run at once)
    gpus_per_cell: float | None = None  # GPUs of one unit (None: 1 where there are GPUs)

    def __post_init__(self):
        if self.seeds is not None:
            self.seeds = [int(x) for x in self.seeds]
            if not self.seeds:
                raise TLIError("a sweep needs at least one seed")
            if len(set(self.seeds)) != len(self.seeds):
                raise TLIError(f"seeds listed twice: {', '.join(map(str, self.seeds))}")

    @property
    def seed_list(self) -> list[int]:
        return list(self.seeds) if self.seeds else [int(self.base.seed)]

    @property
    def arms(self) -> list[str]:
        return ["tli", "placebo"] if self.placebo else ["tli"]

    def variants(self) -> list[tuple[str, int | None]]:
        """(method, rank) columns of the grid: LoRA at each rank, then full fine-tuning (which has no rank)."""
        return ([("lora", int(r)) for r in self.ranks] if "lora" in self.methods else []) + (
            [("full", None)] if "full" in self.methods else [])

    def cells(self) -> list[dict]:
        """The settings of the grid, one per cell (seeds and arms are the units of a cell)."""
        return [{"cell": i, "target_layers": list(t), "method": m, "rank": r, "placement": p}
                for i, (t, p, (m, r)) in enumerate(itertools.product(self.target_layers, self.placements,
                                                                     self.variants()))]

    def units(self) -> list[dict]:
        """Every run of the sweep: seed by seed (a whole grid per seed comes first), each cell's TLI unit and, when
        asked, its placebo."""
        out = []
        for seed in self.seed_list:
            for cell in self.cells():
                for arm in self.arms:
                    out.append(dict(cell, unit=len(out), seed=seed, arm=arm))
        return out

    def config_for(self, cell: dict) -> TLIConfig:
        method = cell.get("method", "lora")
        return dataclasses.replace(self.base, target_layers=list(cell["target_layers"]), method=method,
                                   lora_r=int(cell["rank"]) if method == "lora" else self.base.lora_r,
                                   adapter_blocks=cell["placement"], seed=int(cell.get("seed", self.base.seed)),
                                   pairing="deranged" if cell.get("arm") == "placebo" else "translations")

    def to_dict(self) -> dict:
        return {"base": self.base.to_dict(), "target_layers": self.target_layers, "ranks": self.ranks,
                "placements": self.placements, "correction": self.correction, "methods": self.methods,
                "seeds": self.seeds, "placebo": self.placebo, "tasks": self.tasks, "fewshot": self.fewshot,
                "limit": self.limit, "threads_per_cell": self.threads_per_cell, "gpus_per_cell": self.gpus_per_cell}

    @classmethod
    def from_dict(cls, d: dict) -> "SweepSpec":
        if not isinstance(d, dict) or not isinstance(d.get("base"), dict):
            raise TLIError("sweep.json: not a sweep description")
        if d.get("correction", "bh") not in CORRECTIONS:
            raise TLIError(f"sweep.json: not a sweep description (unknown correction {d.get('correction')!r})")
        try:
            return cls(base=TLIConfig.from_dict(d["base"]), target_layers=[list(t) for t in d["target_layers"]],
                       ranks=[int(r) for r in d["ranks"]], placements=list(d["placements"]),
                       correction=d.get("correction", "bh"), methods=list(d.get("methods", ["lora"])),
                       seeds=d.get("seeds"), placebo=bool(d.get("placebo", False)), tasks=list(d.get("tasks") or []),
                       fewshot=int(d.get("fewshot") or 0), limit=d.get("limit"),
                       threads_per_cell=d.get("threads_per_cell"), gpus_per_cell=d.get("gpus_per_cell"))
        except (KeyError, TypeError, ValueError) as exc:
            raise TLIError(f"sweep.json: not a sweep description ({type(exc).__name__}: {exc})") from None


def unit_label(unit: dict) -> str:
    """'cell 3, seed 2, placebo': one unit, as messages name it."""
    return f"cell {unit['cell']}, seed {unit.get('seed', '?')}" + (", placebo" if unit.get("arm") == "placebo" else "")


def variant_label(method: str | None, rank) -> str:
    """'LoRA r=16' or 'full FT': a cell's method column, as tables and messages show it."""
    return "full FT" if method == "full" else f"LoRA r={int(rank)}"


class Sweep(JobDir):
    marker = "sweep.json"
    kind = "sweep"
    dead_state = "interrupted"

    def status_problem(self, status: dict) -> str | None:
        return record_problem(status, SWEEP_STATUS)

    def dead_message(self, status: dict, pid: str) -> str:
        return "the sweep's driver process ended before the last unit; resume it to finish the missing units"

    @property
    def runs_dir(self) -> Path:
        return self.path.parent.parent

    def spec(self) -> SweepSpec:
        data, problem = read_json_checked(self.path / "sweep.json", None, dict)
        if problem:
            raise TLIError(f"sweep {self.id} is unreadable: {problem}")
        return SweepSpec.from_dict(data)

    def cells(self) -> list[dict]:
        """Every unit (a cell's settings x seed x arm) with its run and state; TLIError ('sweep X is unreadable:
        cells.json: ...') if cells.json cannot be used.

        Sweeps written before seeds and arms existed have one TLI unit per cell, at the base seed."""
        data, problem = read_json_checked(self.path / "cells.json", None)
        problem = problem or units_problem(data)
        if problem:
            raise unreadable("cells.json", problem.removeprefix("cells.json: "))
        units = data
        if units and any("unit" not in u for u in units):
            try:
                seed = int(self.spec().base.seed)
            except TLIError:
                seed = None
            units = [dict(u, unit=i, seed=u.get("seed", seed), arm=u.get("arm", "tli")) for i, u in enumerate(units)]
        return units

    units = cells

    def save_cells(self, cells: list[dict]) -> None:
        write_json(self.path / "cells.json", cells)

    def unit_runs(self) -> list[tuple[dict, Run | None]]:
        """(unit, its run or None if it has none yet or it is gone)."""
        out = []
        for u in self.cells():
            path = self.runs_dir / str(u.get("run") or "")
            out.append((u, Run(path) if u.get("run") and (path / "config.json").is_file() else None))
        return out

    def request_stop(self) -> None:
        """Stop the queue and every running unit (each saves what it has and ends 'stopped')."""
        super().request_stop()
        try:
            units = self.unit_runs()
        except TLIError:  # units unknown: the driver, which reads STOP, stops them
            units = []
        for unit, run in units:
            if run is not None and unit.get("state") in ("running", "queued"):
                run.request_stop()


def create_sweep(spec: SweepSpec, runs_dir: str | Path | None = None, trained=None, control=None,
                 name: str | None = None, pair_names: dict[str, str] | None = None) -> Sweep:
    """Write the sweep's directory (and the pair sets every unit will use); nothing runs yet.

    ``pair_names``: what the user calls the sets (an uploaded file's name); every unit's run records it, not the
    sweep's own copies. Default: the file names of ``spec.base``'s pair paths."""
    unknown = [m for m in spec.methods if m not in METHODS]
    if unknown or not spec.methods:
        raise TLIError(f"sweep methods must be among {', '.join(METHODS)} (got {', '.join(spec.methods) or 'none'})")
    if not spec.target_layers or not spec.placements or ("lora" in spec.methods and not spec.ranks):
        raise TLIError("a sweep needs at least one target layer setting, one placement, and one rank for LoRA")
    if any(r < 1 for r in spec.ranks):
        raise TLIError("every rank in a sweep must be at least 1")
    if spec.threads_per_cell is not None and int(spec.threads_per_cell) < 1:
        raise TLIError("threads per cell must be at least 1")
    if spec.gpus_per_cell is not None and not float(spec.gpus_per_cell) > 0:
        raise TLIError("GPUs per cell must be positive (e.g. 0.5, 1 or 2)")
    root = Path(runs_dir or default_runs_dir()) / SWEEPS
    units = spec.units()
    if spec.threads_per_cell is None:  # fixed now, so a resume with other parallelism computes the same numbers
        spec = dataclasses.replace(spec, threads_per_cell=default_threads(len(units)))
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
        write_json(tmp / "cells.json", [dict(u, run=None, state="pending", reason="", attempts=0) for u in units])
        write_json(tmp / "status.json", {"state": "queued", "created": now(), "updated": now(), "done": 0,
                                         "total": len(units), "cells": len(spec.cells()), "pair_names": names})
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


def sweep_of(run: Run) -> tuple[Sweep, dict] | None:
    """The sweep (and unit record) a run was created for, if any and if it still exists."""
    info = run.raw_status().get("sweep")
    if not isinstance(info, dict) or not info.get("id"):
        return None
    try:
        sweep = load_sweep(str(info["id"]), run.path.parent)
    except TLIError:
        return None
    return sweep, info


# --------------------------------------------------------------------------- results per cell

GROUPS = ("control", "trained")  # the claim is about unseen words: control leads


def outcome(run: Run, group: str, seed: int, protocol: str | None = None) -> Outcome | None:
    """One finished unit's result for ``group`` under ``protocol`` (default: the run's headline)."""
    summary = run.summary(protocol) if protocol else run.summary()
    g = ((summary or {}).get("groups") or {}).get(group)
    if not isinstance(g, dict):
        return None
    try:
        pairs = run.table("pairs", protocol)
    except TLIError:  # a damaged table: the unit counts by its summary alone (its own page says what is wrong)
        pairs = None
    if pairs is not None and "set" in pairs:
        pairs = pairs[pairs["set"] == group].reset_index(drop=True)
    return Outcome(seed=int(seed), group=g, pairs=pairs)


def cell_outcomes(sweep: Sweep, cell: int, group: str, protocol: str | None = None,
                  units: list[tuple[dict, Run | None]] | None = None) -> tuple[list[Outcome], list[Outcome]]:
    """(TLI outcomes, placebo outcomes) of the finished units of one cell."""
    tli, placebo = [], []
    for unit, run in units if units is not None else sweep.unit_runs():
        if unit.get("cell") != cell or unit.get("state") != "done" or run is None:
            continue
        o = outcome(run, group, unit.get("seed") or 0, protocol)
        if o is not None:
            (placebo if unit.get("arm") == "placebo" else tli).append(o)
    return tli, placebo


def _cell_state(units: list[dict]) -> str:
    states = [u.get("state") for u in units]
    if all(s == "done" for s in states):
        return "done"
    if all(s == "invalid" for s in states):
        return "invalid"
    if any(s == "running" for s in states):
        return f"running ({sum(s == 'done' for s in states)} of {len(states)} done)"
    if any(s in ("failed", "stopped") for s in states):
        bad = sum(s in ("failed", "stopped") for s in states)
        return f"{'failed' if any(s == 'failed' for s in states) else 'stopped'} ({bad} of {len(states)})"
    return "pending" if all(s == "pending" for s in states) else f"partial ({states.count('done')} of {len(states)})"


def sweep_results(sweep: Sweep, correction: str | None = None, protocol: str | None = None) -> pd.DataFrame:
    """One row per cell: settings, state, and per set the specific effect over the cell's seeds (its CI and p,
    corrected across cells), the retrieval change, the raw, shuffled and non-translation changes (labelled raw),
    the placebo contrast, and the verdict (``★`` only for a confirmed effect on the control set)."""
    spec = sweep.spec()
    correction = correction or spec.correction
    units = sweep.unit_runs()
    rows = []
    for cell in spec.cells():
        mine = [u for u, _ in units if u.get("cell") == cell["cell"]]
        runs = [u.get("run") for u in mine if u.get("run")]
        row = {"cell": cell["cell"], "target layers": ",".join(map(str, cell["target_layers"])),
               "method": cell.get("method", "lora"), "rank": cell["rank"], "placement": cell["placement"],
               "state": _cell_state(mine) if mine else "pending",
               "seeds": sum(u.get("state") == "done" and u.get("arm") != "placebo" for u in mine),
               "placebo": sum(u.get("state") == "done" and u.get("arm") == "placebo" for u in mine),
               "run": next((u.get("run") for u in mine if u.get("arm") != "placebo" and u.get("run")), None),
               "runs": " ".join(runs),
               "reason": next((u.get("reason") for u in mine if u.get("reason")), "")}
        for g in GROUPS:
            tli, placebo = cell_outcomes(sweep, cell["cell"], g, protocol, units)
            ev = replicated(tli, placebo, p_words_key="p") if tli else None
            pl = (ev or {}).get("placebo") or {}
            row.update({f"{g} specific Δ": _num(ev, "specific"), f"{g} specific CI low": _num(ev, "ci_low"),
                        f"{g} specific CI high": _num(ev, "ci_high"), f"{g} specific p": _num(ev, "p"),
                        f"{g} p basis": (ev or {}).get("basis", ""),
                        f"{g} hit@1 CSLS Δ": _num(ev, "hit1_csls"), f"{g} raw Δ": _num(ev, "raw"),
                        f"{g} shuffled Δ": _num(ev, "shuffled"), f"{g} non-translation Δ": _num(ev, "nontrans"),
                        f"{g} TLI − placebo": _num(pl, "change"), f"{g} TLI − placebo p": _num(pl, "p"),
                        f"{g} seeds sd": _num((ev or {}).get("seeds"), "sd")})
        rows.append(row)
    df = pd.DataFrame(rows)
    for g in GROUPS:
        df[f"{g} specific p corrected"] = correct_pvalues(df[f"{g} specific p"].to_numpy(dtype=float), correction)
        df[f"{g} TLI − placebo p corrected"] = correct_pvalues(df[f"{g} TLI − placebo p"].to_numpy(dtype=float),
                                                               correction)
    verdicts = [_verdict(r, "control", correction) for _, r in df.iterrows()]
    df["verdict"] = [v.text for v in verdicts]
    df["level"] = [v.level for v in verdicts]
    df["★"] = [v.star for v in verdicts]
    trained = [_verdict(r, "trained", correction) for _, r in df.iterrows()]
    df["trained verdict"] = [v.text for v in trained]
    df["trained level"] = [v.level for v in trained]
    df.attrs["correction"] = correction
    return df


def _num(d: dict | None, key: str) -> float:
    v = (d or {}).get(key)
    return float(v) if v is not None else np.nan


def _verdict(row: pd.Series, group: str, correction: str):
    """The cell's verdict on ``group`` with its p-values corrected across the grid's cells."""
    change = row[f"{group} specific Δ"]
    if not np.isfinite(change):
        return Verdict("unknown", "no finished unit yet" if row["state"] != "invalid" else "could not run")
    seeds = {"n": int(row["seeds"])}
    placebo = None
    if np.isfinite(row[f"{group} TLI − placebo"]):
        p = row[f"{group} TLI − placebo p corrected"]
        placebo = {"change": float(row[f"{group} TLI − placebo"]), "p": float(p) if np.isfinite(p) else None}
    p = row[f"{group} specific p corrected"]
    return judge(float(change), float(p) if np.isfinite(p) else None, seeds, placebo,
                 _finite(row[f"{group} raw Δ"]), _finite(row[f"{group} non-translation Δ"]),
                 correction=f"{correction.upper()} over cells")


def _finite(x) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def best_cell(results: pd.DataFrame) -> int | None:
    """The starred cell (confirmed on the control set) with the largest specific effect; None if no cell earns a
    star -- a raw rise, a specific rise in one seed or one the placebo shares is never 'best'."""
    starred = results[results["★"].astype(bool)] if "★" in results else results.iloc[0:0]
    if starred.empty:
        return None
    return int(starred.loc[starred["control specific Δ"].idxmax(), "cell"])


def leading_cell(results: pd.DataFrame) -> int | None:
    """The cell with the largest specific effect on the control set, starred or not (None before any result)."""
    done = results.dropna(subset=["control specific Δ"])
    if done.empty:
        return None
    return int(done.loc[done["control specific Δ"].idxmax(), "cell"])


def no_star_reason(results: pd.DataFrame) -> str:
    """Why no cell has a star, in words (the page and the CLI say it where a star would be)."""
    done = results.dropna(subset=["control specific Δ"])
    if done.empty:
        return "No cell has a result yet."
    count = done["level"].value_counts()
    parts = []
    if count.get("unconfirmed"):
        parts.append(f"{count['unconfirmed']} cell(s) show a specific, significant effect on the control set that is "
                     f"not yet checked against seed noise or a placebo")
    if count.get("within_seed_noise"):
        parts.append(f"{count['within_seed_noise']} cell(s) are within seed-to-seed variation")
    if count.get("not_beyond_placebo"):
        parts.append(f"{count['not_beyond_placebo']} cell(s) are no better than their placebo")
    if count.get("worse"):
        parts.append(f"{count['worse']} cell(s) lowered the specific alignment")
    quiet = count.get("not_specific", 0)
    if quiet:
        parts.append(("no cell's specific effect is" if quiet == len(done) else
                      f"{quiet} cell(s)' specific effect is not") + " significant after correction (a raw rise there "
                     "is shared by non-translations or within noise)")
    missing = []
    if (done["seeds"] < 2).all():
        missing.append("second seed")
    if (done["placebo"] < 1).all():
        missing.append("placebo run")
    if missing:
        parts.append("and no cell could earn one yet: the sweep has no " + " and no ".join(missing)
                     + " (set seeds and tick the placebo)")
    return "No cell qualifies for a ★ (an improvement specific to translations, significant after correction, " \
           f"beyond seed noise and beyond a placebo, at p < {ALPHA}): " + "; ".join(parts) + "."


def cell_view(run: Run, protocol: str | None = None) -> dict | None:
    """The cell a run belongs to, when it has more than this run (other seeds, a placebo): its row of the sweep's
    results (specific effect over seeds, placebo contrast, verdicts corrected across the sweep's cells) and one row
    per unit with its own specific effect -- what Compare shows beside the run's own numbers."""
    found = sweep_of(run)
    if found is None:
        return None
    sweep, info = found
    try:
        units = sweep.unit_runs()
    except TLIError:  # the sweep's own files are damaged: the run's own numbers still stand
        return None
    mine = [(u, r) for u, r in units if u.get("cell") == info.get("cell")]
    if len(mine) < 2:
        return None
    try:
        results = sweep_results(sweep, protocol=protocol)
    except TLIError:
        return None
    row = results[results["cell"] == info.get("cell")]
    if row.empty:
        return None
    per_unit = []
    for u, r in mine:
        entry = {"seed": u.get("seed"), "arm": u.get("arm", "tli"), "state": u.get("state"), "run": u.get("run")}
        summary = (r.summary(protocol) if protocol else r.summary()) if r is not None else None
        for g in GROUPS:
            grp = ((summary or {}).get("groups") or {}).get(g) or {}
            entry[f"{g} specific Δ"] = _num(grp.get("specific"), "change")
            entry[f"{g} raw Δ"] = _num(grp, "change")
        per_unit.append(entry)
    return {"sweep": sweep.id, "cell": int(info.get("cell")), "row": row.iloc[0], "units": pd.DataFrame(per_unit),
            "cells": len(results), "correction": results.attrs.get("correction", "bh")}


def downstream_grid(sweep: Sweep) -> pd.DataFrame:
    """Per unit and benchmark task: accuracy base vs tuned, the change with its CI, McNemar's p, the minimum
    detectable change and the verdict in words (units without benchmarks are left out)."""
    frames = []
    for u, run in sweep.unit_runs():
        try:
            summary = run.downstream_summary() if run is not None else None
        except TLIError:  # one unit's damaged benchmarks: shown on that run's own page, left out here
            summary = None
        if summary:
            t = downstream_table(summary)
            frames.append(t.assign(cell=u.get("cell"), seed=u.get("seed"), arm=u.get("arm", "tli"), run=u.get("run")))
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    return out[["cell", "seed", "arm", "task"] + [c for c in out.columns if c not in ("cell", "seed", "arm", "task")]]


def units_table(sweep: Sweep) -> pd.DataFrame:
    """One row per unit: its cell, seed and arm, run, state, phase and step (from the run's own status)."""
    rows = []
    for u, run in sweep.unit_runs():
        st = run.raw_status() if run is not None else {}
        prog = st.get("progress") if isinstance(st.get("progress"), dict) else {}
        rows.append({"unit": u.get("unit"), "cell": u.get("cell"), "seed": u.get("seed"), "arm": u.get("arm", "tli"),
                     "state": u.get("state"), "phase": st.get("phase") if u.get("state") == "running" else None,
                     "step": f"{st.get('step', 0)}/{st.get('total_steps') or '?'}" if st else None,
                     "done": prog.get("done"), "total": prog.get("total"), "attempts": u.get("attempts", 0),
                     "run": u.get("run"), "reason": u.get("reason", "")})
    return pd.DataFrame(rows)


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
