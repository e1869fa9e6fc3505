"""Honest time (issue 23 item 3): what the sidebar says is the status file now; estimates come from measured costs
of this model here (a calibration before its first run) and the time left follows the run's own pace."""

from __future__ import annotations

import dataclasses
import json
import time

import pandas as pd
import pytest
import streamlit
from conftest import ROOT
from streamlit.testing.v1 import AppTest

from tli_core.config import TLIConfig
from tli_core.estimate import Estimate, calibrate, estimate_run, job_line, remaining
from tli_core.jobs.process import my_process_tag
from tli_core.models import ModelSpec, load_model
from tli_core.runs import Run, create_run
from ui.text import md


def write_status(run: Run, **fields) -> None:
    st = run.raw_status()
    st.update(fields)
    (run.path / "status.json").write_text(json.dumps(st))


def sidebar_text(at: AppTest) -> str:
    return "\n".join(str(e.value) for e in at.sidebar.caption)


def test_the_sidebar_reads_the_runs_status_file_at_every_poll(app_env, tiny_model_dir, monkeypatch):
    polled = {}
    real = streamlit.fragment

    def recording(func=None, *, run_every=None, **kw):  # which sidebar parts poll on their own, and how often
        if func is not None:
            polled[getattr(func, "__name__", "?")] = run_every
            return real(func, run_every=run_every, **kw)
        return real(run_every=run_every, **kw)

    monkeypatch.setattr(streamlit, "fragment", recording)
    run = create_run(TLIConfig(model=ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu")),
                     app_env)
    write_status(run, state="running", phase="loading model", process=my_process_tag(),
                 progress={"phase": "loading model", "done": 55, "total": 100, "phase_seconds": 3.0})
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    # the id reaches Markdown escaped (an id may read like a link), the caption's text is the escaped source
    assert f"{md(run.id)}: running — loading model" in sidebar_text(at) and "queued" not in sidebar_text(at)
    # the line is a fragment of its own that polls the file (a page's own polls do not redraw the sidebar)
    assert 0 < (polled.get("training_line") or 0) <= 2
    write_status(run, phase="training", step=24, total_steps=78,
                 progress={"phase": "training", "done": 24, "total": 78, "phase_seconds": 9.0})
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)  # a poll reads the file again, no kept copy
    at.run()
    assert f"{md(run.id)}: running — training · step 24/78" in sidebar_text(at)


@pytest.mark.parametrize("status, line", [
    ({"state": "queued", "phase": "queued", "step": 0, "total_steps": None}, "queued"),
    ({"state": "running", "phase": "loading model", "step": 0, "total_steps": None,
      "progress": {"phase": "loading model", "done": 55, "total": 100}}, "running — loading model"),
    ({"state": "running", "phase": "embedding before", "progress": {"phase": "embedding before", "done": 0}},
     "running — embedding before"),
    ({"state": "running", "phase": "training", "step": 24, "total_steps": 78,
      "progress": {"phase": "training", "done": 24, "total": 78}}, "running — training · step 24/78"),
])
def test_the_job_line_says_state_phase_and_step_as_the_status_file_does(status, line):
    assert job_line(status) == line


def test_the_time_left_follows_the_runs_own_pace():
    est = Estimate(phases={"loading model": 5.0, "embedding before": 10.0, "training": 40.0,
                           "saving the trained weights": 1.0, "embedding after": 10.0, "evaluating": 4.0})
    # embedding took twice its estimate (a busy machine): what follows is expected to, too; saving is not compute
    status = {"phase_times": {"loading model": 5.0, "embedding before": 20.0},
              "progress": {"phase": "training", "done": 0, "total": 40, "phase_seconds": 0.0}}
    assert remaining(status, est) == pytest.approx(2 * 40 + 1 + 2 * (10 + 4))
    # a fifth into training its own rate counts fully (2.5 s/step against 2 s/step expected), and the pace of what
    # follows takes in the part of training that is done (a fifth of its projected 100 s against 40 s expected)
    status["progress"] |= {"done": 8, "phase_seconds": 20.0}
    speed = (20 + 0.2 * 100) / (10 + 0.2 * 40)
    assert remaining(status, est) == pytest.approx(2.5 * 32 + 1 + speed * 14)
    # before that, the first steps' rate is blended with the estimate (half-way at a tenth)
    status["progress"] |= {"done": 4, "phase_seconds": 10.0}
    speed = (20 + 0.1 * 100) / (10 + 0.1 * 40)
    assert remaining(status, est) == pytest.approx(0.5 * 2.5 * 36 + 0.5 * (40 * speed - 10) + 1 + speed * 14)
    # a phase without counts that has run past its estimate slows the estimate of what follows by as much
    status = {"phase_times": {"loading model": 5.0}, "progress": {"phase": "embedding before", "phase_seconds": 30.0}}
    assert remaining(status, est) == pytest.approx(0 + 1 + 3 * (40 + 10 + 4))


@pytest.mark.demo
def test_a_first_run_is_announced_from_a_calibration_and_its_time_left_follows_it(tmp_path):
    """The demo model, before any run of it here: no guess until the calibration, then an estimate from it, and a
    time left that the run's progress brings down. Announced and measured time are compared loosely; how close they
    come is measured in bench/bench_estimate.py (ratios): on a 3 s run a busy machine's noise is most of it."""
    config = TLIConfig(model=ModelSpec(quantization="fp32", device="cpu"), trained_subset=16, control_subset=8,
                       epochs=2, batch_size=4, warmup_steps=1, protocols=["studio"])
    runs = tmp_path / "runs"
    run = create_run(config, runs)
    assert estimate_run(config, 686, 63, runs) is None  # nothing measured yet: no guess
    lm = load_model(config.model)
    calibrate(lm, config, run.pairs("trained"), runs)
    est = estimate_run(config, 686, 63, runs, lm.facts.num_layers)
    assert "calibration of this model on this machine" in est.basis
    assert est.phases["training"] > 0 and est.phases["embedding before"] > 0
    est = dataclasses.replace(est, phases={k: v for k, v in est.phases.items() if k != "loading model"})
    seen = []

    def progress(phase, done, total, detail=""):
        seen.append((phase, remaining(run.raw_status(), est)))

    from tli_core.worker import execute

    start = time.monotonic()
    assert execute(run, progress=progress, lm=lm)["state"] == "done"
    took = time.monotonic() - start
    print(f"announced {est.total:.1f} s, took {took:.1f} s")
    assert 1 / 4 < est.total / took < 4  # loosely (the same machine, the same minute): the right order, not a guess
    lefts = [left for _, left in seen]
    assert all(left >= 0 for left in lefts) and {"training", "evaluating"} <= {p for p, _ in seen}
    assert lefts[-1] < 0.5 * lefts[0]  # it comes down as the work gets done (the last call is as evaluation starts)


def test_a_sweep_shows_its_units_progress_before_the_first_one_ends(tiny_model_dir, tmp_path):
    from conftest import WORDS

    from tli_core.grid import _create_runs, sweep_eta
    from tli_core.sweeps import SweepSpec, create_sweep

    t, c = tmp_path / "t.csv", tmp_path / "c.csv"
    pd.DataFrame(WORDS[:18], columns=["swahili", "english"]).to_csv(t, index=False)
    pd.DataFrame(WORDS[18:], columns=["swahili", "english"]).to_csv(c, index=False)
    base = TLIConfig(model=ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"),
                     trained_pairs=str(t), control_pairs=str(c), protocols=["studio"])
    sweep = create_sweep(SweepSpec(base=base, target_layers=[[1]], ranks=[2], seeds=[1, 2]), tmp_path / "runs")
    units = sweep.cells()
    _create_runs(sweep, sweep.spec(), units, units, pd.read_csv(t), pd.read_csv(c))
    units[0]["state"] = "running"
    sweep.save_cells(units)
    write_status(Run(tmp_path / "runs" / units[0]["run"]), state="running", phase="training", step=5,
                 total_steps=10, process=my_process_tag(),
                 progress={"phase": "training", "done": 5, "total": 10, "phase_seconds": 4.0})
    eta = sweep_eta(sweep)  # no unit finished, no run of this model measured: the bar still moves
    assert eta.done == 0 and 0 < eta.fraction < 0.5
    assert any("training 5/10" in line for line in eta.running_lines)
