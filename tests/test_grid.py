"""Sweeps on Ray, as a user meets them: several units at a time, a unit whose process is killed, a driver that is
killed and resumed, Stop, results shipped back from a node that cannot see the runs directory, and the same
numbers whether the units ran side by side or one after the other."""

from __future__ import annotations

import os
import signal
import time

import pandas as pd
import pytest

from tests.conftest import tiny_pair_files
from tli_core.config import TLIConfig
from tli_core.errors import TLIError
from tli_core.grid import SHIP_ENV, plan, remaining_seconds, run_sweep, sweep_eta
from tli_core.jobs.process import process_alive
from tli_core.jobs.runner import busy_message, resume_sweep, start_run
from tli_core.models import ModelSpec
from tli_core.runs import Run, list_runs
from tli_core.sweeps import SweepSpec, best_cell, create_sweep, no_star_reason, sweep_results


def _wait(predicate, timeout: float, what: str, step: float = 0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _unit_run(sweep, i: int) -> Run | None:
    u = sweep.cells()[i]
    return Run(sweep.runs_dir / u["run"]) if u.get("run") and (sweep.runs_dir / u["run"]).is_dir() else None


def _training(sweep, i: int, steps: int = 3) -> Run | None:
    run = _unit_run(sweep, i)
    return run if run is not None and run.raw_status().get("phase") == "training" and len(run.metrics()) >= steps \
        else None


def test_units_survive_a_killed_worker_a_killed_driver_and_a_stop(tiny_model_dir, tmp_path):
    """The dashboard's path (a driver process of its own, on a local Ray): retry, resume, stop, resume."""
    t, c = tiny_pair_files(tmp_path)
    base = TLIConfig(model=ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"),
                     trained_pairs=str(t), control_pairs=str(c), batch_size=4, epochs=150, warmup_steps=1,
                     protocols=["studio"])
    runs_dir = tmp_path / "runs"
    sweep = create_sweep(SweepSpec(base=base, target_layers=[[2]], ranks=[2], seeds=[1, 2]), runs_dir)
    resume_sweep(sweep)

    # 1. a unit's process is killed mid-training: Ray runs it again, from a clean run directory
    first = _wait(lambda: _training(sweep, 0), 240, "unit 0 training")
    assert first.status()["state"] == "running" and first.is_active()  # read from another process: alive
    assert busy_message(runs_dir) and "sweep" in busy_message(runs_dir)  # no second job beside the grid
    with pytest.raises(TLIError, match="sweep"):
        start_run(base, runs_dir)
    os.kill(int(first.raw_status()["pid"]), signal.SIGKILL)
    _wait(lambda: first.raw_status().get("attempt") == 2, 180, "unit 0's second attempt")
    retried = first.raw_status()
    assert retried["attempts_log"][0]["reason"].startswith("attempt 1 ended without finishing")

    # 2. the driver is killed once a unit has finished: the sweep reads as interrupted, nothing is lost
    _wait(lambda: sum(u["state"] == "done" for u in sweep.cells()) >= 1
          and any(u["state"] == "running" for u in sweep.cells()), 300, "one unit done, another running")
    driver = sweep.raw_status()["process"]
    os.kill(int(driver.split(":")[0]), signal.SIGKILL)
    _wait(lambda: not process_alive(driver), 30, "the driver to die")
    assert sweep.status()["state"] == "interrupted"
    finished = {u["run"]: Run(runs_dir / u["run"]).raw_status()["finished"] for u in sweep.cells()
                if u["state"] == "done"}
    assert finished

    # 3a. Resume, and Stop at once, while the new driver is still starting Ray: the stop is obeyed, not wiped
    #     (the driver used to clear the STOP file when it got going, and the sweep then ran to its end)
    stale = {u["run"]: Run(runs_dir / u["run"]).raw_status().get("pid") for u in sweep.cells()}
    resume_sweep(sweep)
    sweep.request_stop()
    _wait(lambda: sweep.status()["state"] == "stopped", 120, "the sweep stopped while its driver started")
    assert all(Run(runs_dir / run_id).raw_status()["finished"] == when for run_id, when in finished.items())
    assert not [r for r in list_runs(runs_dir) if r.is_active()]

    # 3b. resume, then stop once a unit trains in a process of the new driver (the killed driver's unit may still
    #     read 'training' in its status file): queued units are cancelled, running ones stop within seconds
    resume_sweep(sweep)

    def _live_training():
        for i, u in enumerate(sweep.cells()):
            run = _training(sweep, i) if u["run"] not in finished else None
            if run is not None and run.raw_status().get("pid") != stale[u["run"]] and run.is_active():
                return run
        return None

    _wait(lambda: sweep.raw_status().get("state") == "running" and _live_training(), 240,
          "the resumed sweep training a unit in a new process")
    asked = time.monotonic()
    sweep.request_stop()
    _wait(lambda: sweep.status()["state"] == "stopped", 60, "the sweep to stop")
    stop_seconds = time.monotonic() - asked
    assert stop_seconds < 30, stop_seconds  # loosely: the measured figure is in bench/
    assert not [u for u in sweep.cells() if u["state"] == "running"]
    assert not [r for r in list_runs(runs_dir) if r.is_active()]

    # 4. resume again: only the missing units run; finished ones are never rerun
    resume_sweep(sweep)
    _wait(lambda: sweep.status()["state"] in ("done", "failed"), 600, "the sweep to finish", step=1.0)
    assert sweep.status()["state"] == "done", sweep.status()
    assert all(u["state"] == "done" for u in sweep.cells())
    for run_id, when in finished.items():
        assert Run(runs_dir / run_id).raw_status()["finished"] == when
    assert len(list_runs(runs_dir)) == 2  # one run directory per unit, whatever happened
    eta = sweep_eta(sweep)
    assert eta.done == 2 and eta.seconds_left == 0.0


def test_a_node_that_cannot_see_the_runs_directory_ships_its_run_back(tiny_model_dir, tmp_path, ray_runtime,
                                                                      monkeypatch):
    t, c = tiny_pair_files(tmp_path)
    base = TLIConfig(model=ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"),
                     trained_pairs=str(t), control_pairs=str(c), batch_size=4, epochs=1, warmup_steps=1,
                     protocols=["studio"])
    sweep = create_sweep(SweepSpec(base=base, target_layers=[[1]], ranks=[2]), tmp_path / "runs")
    monkeypatch.setenv(SHIP_ENV, "1")
    assert run_sweep(sweep)["state"] == "done"
    run = Run(tmp_path / "runs" / sweep.cells()[0]["run"])
    assert run.status()["state"] == "done" and run.has_adapter()
    assert (run.eval_dir / "studio" / "pairs.csv").is_file()
    assert sweep_results(sweep).loc[0, "state"] == "done"


def test_resources_follow_the_machine_and_the_grid(tiny_model_dir, tmp_path):
    t, c = tiny_pair_files(tmp_path)
    base = TLIConfig(model=ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"),
                     trained_pairs=str(t), control_pairs=str(c))
    sweep = create_sweep(SweepSpec(base=base, target_layers=[[1], [2]], ranks=[2, 4]), tmp_path / "runs")
    p = plan(sweep, 4, cluster={"CPU": 8, "memory": 64 << 30})
    assert sweep.spec().threads_per_cell >= 1
    assert p.slots * p.threads <= 8 and p.gpus == 0  # cells x threads never exceed the cores
    small = plan(sweep, 4, cluster={"CPU": 8, "memory": p.memory * 2})
    assert small.slots == 2 and "memory" in small.why  # memory, not cores, bounds it
    assert plan(sweep, 4, parallel=1, cluster={"CPU": 8, "memory": 64 << 30}).slots == 1
    gpu = plan(create_sweep(SweepSpec(base=TLIConfig(model=ModelSpec(model=str(tiny_model_dir), quantization="fp32",
                                                                      device="cuda"),
                                                      trained_pairs=str(t), control_pairs=str(c)),
                                      target_layers=[[1]], ranks=[2, 4, 8], gpus_per_cell=2), tmp_path / "g"),
               3, cluster={"CPU": 16, "GPU": 8, "memory": 256 << 30})
    assert gpu.slots == 3 and gpu.gpus == 2  # 8 GPUs, 2 per unit: four could run, the grid has three
    assert remaining_seconds([10, 10, 10, 10], 2) == 20 and remaining_seconds([30, 10, 10, 10], 2) == 30


@pytest.mark.demo
def test_a_parallel_sweep_equals_the_sequential_one_bit_for_bit(tmp_path, ray_runtime):
    """The same 2 x 2 demo sweep (layers 1, 2 x LoRA, full), two units at a time and one at a time: identical
    per-pair tables."""
    from tli_core.pairs import DEFAULT_CONTROL, DEFAULT_TRAINED

    # float32 compute: on CPUs without bf16 matrix units (this 2-core AMD EPYC) a bf16 matmul is 10-25x slower
    base = TLIConfig(model=ModelSpec(model="demo", device="cpu", compute_dtype="float32"),
                     trained_pairs=str(DEFAULT_TRAINED), control_pairs=str(DEFAULT_CONTROL), trained_subset=24,
                     control_subset=16, epochs=1, batch_size=8, warmup_steps=1, protocols=["studio", "paper-code"])
    tables = []
    for parallel in (2, 1):
        # LoRA and full fine-tuning of the NF4 blocks (dequantized, trained in float32) side by side
        sweep = create_sweep(SweepSpec(base=base, target_layers=[[1], [2]], ranks=[2], methods=["lora", "full"]),
                             tmp_path / f"runs{parallel}")
        assert run_sweep(sweep, parallel=parallel)["state"] == "done"
        assert sweep.status()["plan"]["slots"] == parallel
        results = sweep_results(sweep)
        assert list(results["method"]) == ["lora", "full", "lora", "full"] and set(results["state"]) == {"done"}
        # one seed and no placebo: no cell can be confirmed, so no star, and the reason says what is missing
        assert best_cell(results) is None and "second seed" in no_star_reason(results)
        frames = []
        for u in sweep.cells():
            for protocol in ("studio", "paper-code"):
                df = pd.read_csv(sweep.runs_dir / u["run"] / "eval" / protocol / "pairs_layers.csv")
                frames.append(df.assign(cell=u["cell"], protocol=protocol))
        tables.append(pd.concat(frames, ignore_index=True))
    pd.testing.assert_frame_equal(tables[0], tables[1], check_exact=True)
