"""How long a real worker takes to stop after a SIGTERM, in each phase it reaches (issue 23 item 2, issue 24 item 6).

Starts the dashboard's worker (``python -m tli_core worker RUN``) on the demo model with float32 compute and small
subsets, waits until its status.json names PHASE, sends SIGTERM and measures until the process has ended. Prints one
line per phase: the seconds to stop, the state and phase recorded. Usage:

    .venv/bin/python bench/bench_stop.py ["loading model" "embedding before" training ...]
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tli_core.config import TLIConfig  # noqa: E402
from tli_core.jobs.process import process_alive, spawn_worker  # noqa: E402
from tli_core.models import ModelSpec  # noqa: E402
from tli_core.runs import create_run  # noqa: E402

PHASES = ["loading model", "embedding before", "training", "embedding after", "evaluating"]


def demo_config(**changes) -> TLIConfig:
    return dataclasses.replace(TLIConfig(model=ModelSpec(compute_dtype="float32", device="cpu"),
                                         trained_subset=48, control_subset=16, epochs=1, batch_size=8,
                                         warmup_steps=1), **changes)


def stop_in_phase(runs_dir: Path, phase: str, config: TLIConfig | None = None, wait: float = 1200.0,
                  after: float = 0.5) -> dict:
    """Run a worker until its status names ``phase`` (+ ``after`` seconds), SIGTERM it; the seconds until it ended."""
    run = create_run(config or demo_config(), runs_dir)
    pid = spawn_worker("worker", run.path, run.log_path)
    tag = (run.path / "worker.pid").read_text().strip()
    deadline = time.monotonic() + wait
    while run.raw_status().get("phase") != phase:
        if time.monotonic() > deadline or not process_alive(tag):
            raise RuntimeError(f"the worker never reached {phase!r}: {run.raw_status()}")
        time.sleep(0.05)
    time.sleep(after)
    sent = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    while process_alive(tag):
        time.sleep(0.02)
    seconds = time.monotonic() - sent
    st = run.raw_status()
    return {"phase": phase, "seconds": round(seconds, 2), "state": st.get("state"), "recorded": st.get("phase"),
            "stopped_in": st.get("stopped_in"), "message": st.get("message"), "run": run}


def main(phases: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for phase in phases:
            r = stop_in_phase(Path(tmp), phase)
            print(f"{phase:28s} stopped in {r['seconds']:6.2f} s  state={r['state']} phase={r['recorded']} "
                  f"stopped_in={r['stopped_in']}  {r['message']}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or PHASES)
