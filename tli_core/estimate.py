"""How long will a run take? From what earlier runs of the same model measured on this machine.

Every run records the seconds each phase took (``phase_times`` in status.json) and each
step's time (metrics.jsonl). A new run's phases are estimated from those costs per unit --
seconds per word embedded, per training step, per model load -- taken as medians over the
finished runs of the same model and device; with no such run yet, from a layer scan's
seconds per word (rough: the step cost is then derived from it).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from .config import TLIConfig, total_steps
from .protocols import get_protocol
from .runs import Run, list_runs

EMBED_PHASES = ("embedding before", "embedding after", "embedding after (adapter merged)")
SAVE_PHASE = "saving the trained weights"


@dataclass
class Estimate:
    phases: dict[str, float] = field(default_factory=dict)  # phase -> seconds
    basis: str = ""

    @property
    def total(self) -> float:
        return sum(self.phases.values())


def _run_costs(run: Run) -> dict | None:
    st = run.raw_status()
    times = st.get("phase_times") or {}
    if st.get("state") != "done" or not times:
        return None
    pairs = st.get("pairs") or {}
    words = 2 * sum(int(v.get("rows") or 0) for v in pairs.values() if isinstance(v, dict))
    costs = {}
    if words and times.get("embedding before"):
        costs["word"] = times["embedding before"] / words
    metrics = run.metrics()
    if not metrics.empty and "step_time" in metrics:
        costs["step"] = float(metrics["step_time"].median())
    if times.get("loading model"):
        costs["load"] = times["loading model"]
    if times.get(SAVE_PHASE):
        costs["save"] = times[SAVE_PHASE]
    if words and times.get("evaluating"):
        costs["evaluate_word"] = times["evaluating"] / words
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


def estimate_run(config: TLIConfig, n_trained: int, n_control: int, runs_dir, num_layers: int | None = None,
                 scan_seconds_per_word: float | None = None, load_seconds: float | None = None) -> Estimate | None:
    """Seconds per phase of a run with ``config`` on sets of these sizes, or None with nothing to go on.

    ``load_seconds``: how long this model took to load here (the server's copy), for the worker's own load
    before any run has measured it."""
    costs, n = unit_costs(runs_dir, config)
    basis = f"measured by {n} finished run{'s' if n != 1 else ''} of this model on this machine"
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
              "training": steps * costs["step"], SAVE_PHASE: costs.get("save", 0.0),
              "embedding after": words * costs["word"]}
    if any(p.merged and p.quantization is None for p in protocols):
        phases["embedding after (adapter merged)"] = words * costs["word"]
    for p in protocols:
        if p.quantization:
            phases[f"{p.name} (reloaded base)"] = costs.get("load", load_seconds or 0.0) + 2 * words * costs["word"]
    phases["evaluating"] = words * costs.get("evaluate_word", 0.0)
    return Estimate(phases={k: v for k, v in phases.items() if v > 0}, basis=basis)


def remaining(status: dict, estimate: Estimate | None) -> float | None:
    """Seconds left for a running run: the current phase at its own pace, then the estimate of what follows."""
    progress = status.get("progress") or {}
    phase, done, total = progress.get("phase"), progress.get("done"), progress.get("total")
    spent = float(progress.get("phase_seconds") or 0)
    if not phase:
        return estimate.total if estimate else None
    if done and total:
        left = spent / done * (total - done)
    elif estimate and phase in estimate.phases:
        left = max(estimate.phases[phase] - spent, 0.0)
    else:
        left = 0.0
    if estimate is None:
        return left if done else None
    order = list(estimate.phases)
    later = order[order.index(phase) + 1:] if phase in order else [p for p in order
                                                                     if p not in (status.get("phase_times") or {})]
    return left + sum(estimate.phases[p] for p in later)


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
