"""How long will a run take? From what earlier runs of the same model measured on this machine.

Every run records the seconds each phase took (``phase_times`` in status.json) and each
step's time (metrics.jsonl). A new run's phases are estimated from those costs per unit --
seconds per word embedded, per training step, per model load -- taken as medians over the
finished runs of the same model and device. Before the first run of a model, a calibration
(``calibrate``: one embedding pass over a sample of pairs, one training step's forward and
backward, timed on the loaded model) measures the same costs; it is kept in the runs
directory, per model and machine. A layer scan's seconds per word is the last resort (rough).

While a run goes, ``remaining`` corrects the estimate by the run's own pace: the phase under
way at its own rate (blended with its estimate while few units are done), the phases to come
scaled by how the finished ones compared with their estimate (a busy machine is slow for all).
"""

from __future__ import annotations

import hashlib
import json
import socket
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import TLIConfig, total_steps
from .errors import TLIError
from .files import read_json_checked, write_json
from .protocols import get_protocol
from .runs import Run, list_runs

EMBED_PHASES = ("embedding before", "embedding after", "embedding after (adapter merged)")
SAVE_PHASE = "saving the trained weights"
CHECK_PHASE = "checking the 4-bit dequantization"
UNPACED = ("loading model", SAVE_PHASE, "checking")  # phases whose time says nothing of the machine's compute pace
CALIBRATION_DIR = ".calibration"


@dataclass
class Estimate:
    phases: dict[str, float] = field(default_factory=dict)  # phase -> seconds
    basis: str = ""

    @property
    def total(self) -> float:
        return sum(self.phases.values())


def _run_costs(run: Run) -> dict | None:
    st = run.raw_status()
    times = {k: v for k, v in (st.get("phase_times") or {}).items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if st.get("state") != "done" or not times:
        return None
    pairs = st.get("pairs") or {}
    words = 2 * sum(int(v.get("rows") or 0) for v in pairs.values() if isinstance(v, dict))
    costs = {}
    if words and times.get("embedding before"):
        costs["word"] = times["embedding before"] / words
    try:
        metrics = run.metrics()
        if not metrics.empty and "step_time" in metrics:
            costs["step"] = float(metrics["step_time"].median())
    except TLIError:  # one run's damaged metrics leave out its step cost; its own view says why
        pass
    if times.get("loading model"):
        costs["load"] = times["loading model"]
    if times.get(SAVE_PHASE):
        costs["save"] = times[SAVE_PHASE]
    if words and times.get("evaluating"):
        costs["evaluate_word"] = times["evaluating"] / words
    if words and times.get(CHECK_PHASE):
        costs["check_word"] = times[CHECK_PHASE] / words
    return costs


def unit_costs(runs_dir, config: TLIConfig) -> tuple[dict, int]:
    """Median seconds per word, per step and per load over finished runs of the same model; and how many runs."""
    samples: dict[str, list[float]] = {}
    n = 0
    for run in list_runs(runs_dir):
        if run.model_spec() != config.model:
            continue
        costs = _run_costs(run)
        if not costs:
            continue
        n += 1
        for key, value in costs.items():
            samples.setdefault(key, []).append(value)
    return {key: statistics.median(v) for key, v in samples.items()}, n


def calibration_path(runs_dir, spec) -> Path:
    key = json.dumps(dict(spec.to_dict(), host=socket.gethostname()), sort_keys=True)
    return Path(runs_dir) / CALIBRATION_DIR / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.json"


def read_calibration(runs_dir, spec) -> dict | None:
    cal, problem = read_json_checked(calibration_path(runs_dir, spec), None, dict)
    return None if problem or not cal else cal


def _local_poolings(config: TLIConfig) -> list[str]:
    return list(dict.fromkeys(get_protocol(p, config.eval_layer, config.eval_pooling).pooling
                              for p in config.protocols if get_protocol(p).quantization is None)) or ["mean"]


def calibrate(lm, config: TLIConfig, pairs, runs_dir, sample: int = 32) -> dict:
    """Measure this model's costs on this machine and keep them (``<runs>/.calibration/``): seconds per word of an
    embedding pass (per pooling) and of the 4-bit check, per word of the statistics, and of one training step
    of ``config``'s batch and depth; with the model's load time. Takes a few seconds; changes nothing."""
    from .config import resolve
    from .evaluation import conditioning_of_sets, embed_sets, evaluate
    from .training import time_step

    resolved, _ = resolve(config, lm.facts.shape())
    part = pairs.iloc[:sample].reset_index(drop=True)
    sets = {"trained": part}
    words = len(set(part["swahili"]) | set(part["english"]))
    poolings = _local_poolings(config)
    start = time.perf_counter()
    before = embed_sets(lm.model, lm.tokenizer, sets, poolings, config.analysis_precision)
    embed_seconds = time.perf_counter() - start
    start = time.perf_counter()
    conditioning_of_sets(lm.model, lm.tokenizer, sets, before, config.analysis_precision)
    check_seconds = time.perf_counter() - start
    protocol = get_protocol(config.protocols[0], config.eval_layer, config.eval_pooling)
    start = time.perf_counter()
    evaluate(sets, before[protocol.pooling], before[protocol.pooling], resolved.eval_layer, protocol, seed=0)
    evaluate_seconds = time.perf_counter() - start
    step = time_step(lm.model, lm.tokenizer, pairs, config, resolved.target_layers, repeats=1)
    record = {"model": config.model.to_dict(), "host": socket.gethostname(),
              "measured": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "words": words, "word_per_pooling": embed_seconds / words / len(poolings),
              "check_word": check_seconds / words / len(poolings), "evaluate_word": evaluate_seconds / words,
              "step": step, "batch": min(config.batch_size, len(pairs)), "depth": _depth(config, resolved.target_layers,
                                                                                       lm.facts.num_layers),
              "load": lm.facts.load_seconds}
    write_json(calibration_path(runs_dir, config.model), record)
    return record


def _depth(config: TLIConfig, target_layers, num_layers: int | None) -> int:
    """Blocks a training step runs: up to the deepest target layer with early exit, else all."""
    return max(target_layers) + 1 if config.early_exit or not num_layers else num_layers + 1


def _calibrated(cal: dict, config: TLIConfig, num_layers: int | None) -> dict:
    """Unit costs for ``config`` from a calibration (a step scaled by batch and depth)."""
    poolings = len(_local_poolings(config))
    depth = _depth(config, [k if k >= 0 else (num_layers or 0) + k for k in config.target_layers], num_layers)
    out = {"word": cal["word_per_pooling"] * poolings, "evaluate_word": cal.get("evaluate_word", 0.0),
           "step": cal["step"] * config.batch_size / max(1, cal["batch"]) * depth / max(1, cal["depth"])}
    if cal.get("check_word"):
        out["check_word"] = cal["check_word"] * poolings
    if cal.get("load"):
        out["load"] = cal["load"]
    return out


def estimate_run(config: TLIConfig, n_trained: int, n_control: int, runs_dir, num_layers: int | None = None,
                 scan_seconds_per_word: float | None = None, load_seconds: float | None = None) -> Estimate | None:
    """Seconds per phase of a run with ``config`` on sets of these sizes, or None with nothing to go on.

    ``load_seconds``: how long this model took to load here (the server's copy), for the worker's own load
    before any run has measured it."""
    costs, n = unit_costs(runs_dir, config)
    basis = f"measured by {n} finished run{'s' if n != 1 else ''} of this model on this machine"
    cal = read_calibration(runs_dir, config.model)
    if cal is not None:
        try:
            filled = {k: v for k, v in _calibrated(cal, config, num_layers).items() if k not in costs}
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            filled = {}
        if filled and not n:
            basis = f"measured by a calibration of this model on this machine ({cal.get('measured', '?')})"
        costs = filled | costs
    if "word" not in costs and scan_seconds_per_word:
        costs["word"] = scan_seconds_per_word
        basis = "rough: from the last layer scan's time per word"
    if "word" not in costs:
        return None
    if "step" not in costs:  # a step embeds 2 x batch words with gradients, over the blocks up to the target
        depth = (max(config.target_layers) + 1) / (num_layers + 1) if num_layers and config.early_exit else 1.0
        costs["step"] = 3.0 * 2 * config.batch_size * costs["word"] * depth
    trained = min(config.trained_subset or n_trained, n_trained)
    control = min(config.control_subset or n_control, n_control)
    words = 2 * (trained + control)
    steps = total_steps(trained, config.batch_size, config.epochs)
    protocols = [get_protocol(p) for p in config.protocols]
    phases = {"loading model": costs.get("load", load_seconds or 0.0), "embedding before": words * costs["word"],
              CHECK_PHASE: words * costs.get("check_word", 0.0),
              "training": steps * costs["step"], SAVE_PHASE: costs.get("save", 0.0),
              "embedding after": words * costs["word"]}
    if any(p.merged and p.quantization is None for p in protocols):
        phases["embedding after (adapter merged)"] = words * costs["word"]
    phases["evaluating"] = words * costs.get("evaluate_word", 0.0)
    for p in protocols:
        if p.quantization:
            phases[f"{p.name} (reloaded base)"] = costs.get("load", load_seconds or 0.0) + 2 * words * costs["word"]
    return Estimate(phases={k: v for k, v in phases.items() if v > 0}, basis=basis)


def _paced_sums(status: dict, estimate: Estimate) -> tuple[float, float]:
    times = status.get("phase_times") or {}
    pairs = [(float(times[p]), estimate.phases[p]) for p in times
             if p in estimate.phases and p not in UNPACED and isinstance(times[p], (int, float))]
    return sum(t for t, _ in pairs), sum(e for _, e in pairs)


def _bounded(took: float, expected: float) -> float:
    return min(4.0, max(0.25, took / expected)) if expected > 0 and took > 0 else 1.0


def pace(status: dict, estimate: Estimate) -> float:
    """How much longer (> 1) or shorter this run's compute phases take than their estimate (1: no evidence yet):
    the finished phases, and the one under way as far as it has gone (its own rate; or, without counts, its time
    so far once that exceeds its estimate). Bounded to 1/4..4 so that one odd phase cannot throw the rest far off."""
    took, expected = _paced_sums(status, estimate)
    progress = status.get("progress") or {}
    phase, done, total = progress.get("phase"), progress.get("done"), progress.get("total")
    spent = float(progress.get("phase_seconds") or 0)
    planned = estimate.phases.get(phase, 0.0) if phase not in UNPACED else 0.0
    if planned > 0:
        if done and total:  # its projected length, weighted by how much of it is done
            frac = min(1.0, done / total)
            took, expected = took + frac * spent / done * total, expected + frac * planned
        elif spent > planned * _bounded(took, expected):  # already longer than expected: at least this slow
            took, expected = took + spent, expected + planned
    return _bounded(took, expected)


def remaining(status: dict, estimate: Estimate | None) -> float | None:
    """Seconds left for a running run: the current phase at its own pace (blended with its estimate while under a
    fifth of it is done), then the estimate of what follows, scaled by the run's pace so far."""
    progress = status.get("progress") or {}
    phase, done, total = progress.get("phase"), progress.get("done"), progress.get("total")
    spent = float(progress.get("phase_seconds") or 0)
    if not phase:
        return estimate.total if estimate else None
    speed = pace(status, estimate) if estimate else 1.0
    guess = None
    if estimate and phase in estimate.phases:
        guess = max(estimate.phases[phase] * (1.0 if phase in UNPACED else speed) - spent, 0.0)
    if done and total:
        own = spent / done * (total - done)
        weight = min(1.0, done / total / 0.2) if guess is not None else 1.0  # the first units are the noisiest
        left = weight * own + (1 - weight) * guess if guess is not None else own
    else:
        left = guess or 0.0
    if estimate is None:
        return left if done else None
    order = list(estimate.phases)
    later = order[order.index(phase) + 1:] if phase in order else [p for p in order
                                                                     if p not in (status.get("phase_times") or {})]
    return left + sum(estimate.phases[p] * (1.0 if p in UNPACED else speed) for p in later)


def job_line(status: dict) -> str:
    """State, phase and step of a run, as its status file says them now (the sidebar)."""
    progress = status.get("progress") or {}
    state = status.get("state") or "unknown"
    phase = progress.get("phase") or status.get("phase") or "starting"
    line = f"{state} — {phase}" if phase != state else state
    if status.get("total_steps"):
        line += f" · step {int(status.get('step') or 0)}/{int(status['total_steps'])}"
    return line


def progress_text(status: dict, estimate: Estimate | None) -> tuple[float, str]:
    """A running run's progress bar: the fraction of its phase done, and the phase with its counts, the time
    in this phase and in all, and the overall time left."""
    progress = status.get("progress") or {}
    phase = progress.get("phase") or status.get("phase") or "starting"
    done, total = progress.get("done") or 0, progress.get("total")
    unit = {"training": "steps", "loading model": "%"}.get(phase, "words" if "embedding" in phase else "")
    text = f"{phase}: {done:g}/{total:g} {unit}".rstrip() if total else f"{phase} …"
    in_phase = float(progress.get("phase_seconds") or 0)
    elapsed = in_phase + sum(float(v) for v in (status.get("phase_times") or {}).values())
    text += f" · {in_phase:.0f} s in this phase, {elapsed:.0f} s in all"
    left = remaining(status, estimate)
    if left is not None:
        text += f" · about {left:.0f} s left"
    return (done / total if total else 0.0), text
