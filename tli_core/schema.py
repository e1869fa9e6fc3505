"""What each file of a run or a sweep must hold to be shown: one small check per file type.

A file that exists but fails its check reads as ``unreadable: FILE: reason`` -- as the state of
its run or sweep in listings (status, config, summary), or as a ``TLIError`` raised by the reader
of that one file (tables, metrics, benchmarks, a sweep's units) and shown where its data would
have been. So one damaged file only ever affects its own run's or sweep's view.

A field that is absent or null reads as absent everywhere; a field of the wrong kind is damage.
"""

from __future__ import annotations

import pandas as pd

from .errors import TLIError

INT, NUMBER, TEXT, MAPPING, LIST = "a whole number", "a number", "text", "a mapping", "a list"


def _fits(value, kind: str) -> bool:
    if value is None:
        return True
    if kind == INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {TEXT: str, MAPPING: dict, LIST: list}[kind])


def record_problem(data, fields: dict[str, str], required: tuple[str, ...] = (), where: str = "") -> str | None:
    """Why ``data`` (one JSON object) does not hold ``fields`` (name -> kind), or None when it does."""
    at = f"{where}: " if where else ""
    if not isinstance(data, dict):
        return f"{at}expected a JSON mapping, found {type(data).__name__}"
    for name in required:
        if data.get(name) is None:
            return f"{at}no {name!r}"
    for name, kind in fields.items():
        if not _fits(data.get(name), kind):
            return f"{at}{name!r} is not {kind} ({_short(data.get(name))})"
    return None


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def unreadable(name: str, reason: str) -> TLIError:
    return TLIError(f"unreadable: {name}: {reason}")


# --------------------------------------------------------------------------- status.json

RUN_STATUS = {"state": TEXT, "phase": TEXT, "message": TEXT, "created": TEXT, "created_ns": INT, "started": TEXT,
              "finished": TEXT, "step": INT, "total_steps": INT, "epoch": INT, "loss": NUMBER, "elapsed": NUMBER,
              "pairs": MAPPING, "import": MAPPING, "sweep": MAPPING, "progress": MAPPING, "phase_times": MAPPING,
              "learning_blocks": LIST, "target_layers": LIST, "trainable_parameters": INT, "eval_layer": INT,
              "warnings": LIST, "versions": MAPPING, "resolved": MAPPING, "train": MAPPING}
SWEEP_STATUS = {"state": TEXT, "message": TEXT, "created": TEXT, "started": TEXT, "finished": TEXT, "done": INT,
                "total": INT, "cells": INT, "plan": MAPPING, "pair_names": MAPPING}


def run_status_problem(st: dict) -> str | None:
    problem = record_problem(st, RUN_STATUS)
    if problem:
        return problem
    for role, sets in (st.get("pairs") or {}).items():
        problem = record_problem(sets, {"name": TEXT, "hash": TEXT, "rows": INT}, where=f"pairs.{role}")
        if problem:
            return problem
    if st.get("import") is not None:
        problem = record_problem(st["import"], {"source": TEXT, "imported": TEXT, "adapter_config": MAPPING},
                                 ("source", "adapter_config"), "import")
    if not problem and st.get("sweep") is not None:
        problem = record_problem(st["sweep"], {"id": TEXT, "cell": INT}, ("id",), "sweep")
    if not problem and st.get("progress") is not None:
        problem = record_problem(st["progress"], {"phase": TEXT, "done": NUMBER, "total": NUMBER}, where="progress")
    if not problem and not all(isinstance(b, int) for b in st.get("learning_blocks") or []):
        problem = "'learning_blocks' is not a list of block numbers"
    return problem


# --------------------------------------------------------------------------- summary.json

GROUP = {"n": INT, "mean_before": NUMBER, "mean_after": NUMBER, "std_before": NUMBER, "std_after": NUMBER,
         "change": NUMBER, "pct_change": NUMBER, "t": NUMBER, "p": NUMBER, "p_holm": NUMBER, "ci_low": NUMBER,
         "ci_high": NUMBER, "specific": MAPPING, "retrieval": MAPPING, "shuffled_mean_before": NUMBER,
         "shuffled_mean_after": NUMBER, "gap_before": NUMBER, "gap_after": NUMBER}
SUMMARY = {"groups": MAPPING, "num_layers": INT, "eval_layer": INT, "pooling": TEXT, "precision": TEXT,
           "headline": TEXT, "protocols": MAPPING, "model": TEXT, "protocol_description": TEXT}


def summary_problem(summary: dict, where: str = "") -> str | None:
    """A before/after summary (or one protocol's): its layers, pooling and at least one set with its statistics."""
    problem = record_problem(summary, SUMMARY, ("groups", "num_layers", "eval_layer", "pooling"), where)
    if problem:
        return problem
    if not summary["groups"]:
        return f"{where + ': ' if where else ''}no set has statistics ('groups' is empty)"
    for name, group in summary["groups"].items():
        problem = record_problem(group, GROUP, ("n", "mean_before", "mean_after"),
                                 f"{where + '.' if where else ''}groups.{name}")
        if problem:
            return problem
    for name, protocol in (summary.get("protocols") or {}).items():
        problem = summary_problem(protocol, f"protocols.{name}")
        if problem:
            return problem
    return None


# --------------------------------------------------------------------------- evaluation tables, metrics

TABLE_COLUMNS = {  # table -> (columns every view reads, those that must be numbers)
    "pairs": (("swahili", "english", "set", "before", "after", "change"), ("before", "after", "change")),
    "pairs_layers": (("swahili", "english", "set", "layer", "before", "after", "change"),
                     ("layer", "before", "after", "change")),
    "curve": (("set", "phase", "layer", "true_mean", "shuffled_mean", "gap", "p1_nn", "p1_csls", "chance_p1"),
              ("layer", "true_mean", "shuffled_mean", "gap", "p1_nn", "p1_csls", "chance_p1")),
    "layer_stats": (("set", "layer", "mean_before", "mean_after"), ("layer", "mean_before", "mean_after")),
    "retrieval": (("set", "layer", "swahili", "csls_rank_before", "csls_rank_after"),
                  ("layer", "csls_rank_before", "csls_rank_after")),
}


def table_problem(name: str, df: pd.DataFrame) -> str | None:
    columns, numeric = TABLE_COLUMNS.get(name, ((), ()))
    missing = [c for c in columns if c not in df.columns]
    if missing:
        return f"no column {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
    wrong = [c for c in numeric if len(df) and not pd.api.types.is_numeric_dtype(df[c])]
    return f"column {wrong[0]!r} holds text, not numbers" if wrong else None


METRIC = {"step": INT, "total_steps": INT, "epoch": INT, "lr": NUMBER, "loss": NUMBER, "grad_norm": NUMBER,
          "pos_sim": NUMBER, "neg_sim": NUMBER, "active": NUMBER, "step_time": NUMBER, "elapsed": NUMBER}
METRIC_REQUIRED = ("step", "loss", "lr", "grad_norm", "step_time", "pos_sim", "neg_sim")


# --------------------------------------------------------------------------- benchmarks, sweeps, sessions

BENCHMARK = {"n": INT, "acc_base": NUMBER, "acc_tuned": NUMBER, "change": NUMBER, "ci_low": NUMBER,
             "ci_high": NUMBER, "lost": INT, "gained": INT, "p_mcnemar": NUMBER, "mdc": NUMBER, "verdict": TEXT}


def downstream_problem(summary) -> str | None:
    problem = record_problem(summary, {"results": MAPPING, "chance": MAPPING, "limit": INT, "num_fewshot": INT},
                             ("results",))
    if problem:
        return problem
    for task, result in summary["results"].items():
        problem = record_problem(result, BENCHMARK, ("n", "acc_base", "acc_tuned", "change", "ci_low", "ci_high",
                                                     "lost", "gained", "p_mcnemar"), f"results.{task}")
        if problem:
            return problem
    return None


UNIT = {"cell": INT, "unit": INT, "seed": INT, "arm": TEXT, "state": TEXT, "run": TEXT, "reason": TEXT,
        "attempts": INT, "target_layers": LIST, "method": TEXT, "placement": TEXT}


def units_problem(units) -> str | None:
    if not isinstance(units, list):
        return f"expected a JSON list of units, found {type(units).__name__}"
    if not units:
        return "no units (the list is empty)"
    for i, unit in enumerate(units):
        problem = record_problem(unit, UNIT, ("cell",), f"unit {i}")
        if problem:
            return problem
    return None


SESSION = {"sets": MAPPING, "last_run": TEXT}


def session_problem(data) -> str | None:
    problem = record_problem(data, SESSION)
    if problem:
        return problem
    if not all(isinstance(v, str) for v in (data.get("sets") or {}).values()):
        return "'sets' does not name word-pair sets"
    forms = [k for k, v in data.items() if k.startswith("form-") and not isinstance(v, (dict, type(None)))]
    return f"{forms[0]!r} is not a mapping" if forms else None
