"""Run directories end to end on the tiny model: files, statistics, adapters, stop, SIGKILL, lock."""

import io
import json
import os
import signal
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from tli_core.config import TLIConfig
from tli_core.errors import TLIError
from tli_core.jobs.process import JobLock, spawn_worker
from tli_core.jobs.runner import busy_message, start_evaluation
from tli_core.models import ModelSpec
from tli_core.runs import Run, create_run, delete_run, diff_configs, list_runs, runs_table
from tli_core.worker import execute


def tiny_config(model_dir, pair_files, **changes):
    trained, control = pair_files
    base = dict(model=ModelSpec(model=str(model_dir), quantization="fp32", device="cpu"),
                trained_pairs=str(trained), control_pairs=str(control), target_layers=[2], batch_size=4,
                epochs=2, warmup_steps=1, learning_rate=5e-3)
    base.update(changes)
    return TLIConfig(**base)


@pytest.fixture(scope="module")
def done_run(tiny_model_dir, tmp_path_factory):
    from tests.conftest import WORDS

    d = tmp_path_factory.mktemp("done")
    trained, control = d / "trained.csv", d / "control.csv"
    pd.DataFrame(WORDS[:18], columns=["swahili", "english"]).to_csv(trained, index=False)
    pd.DataFrame(WORDS[18:], columns=["swahili", "english"]).to_csv(control, index=False)
    run = create_run(tiny_config(tiny_model_dir, (trained, control)), d / "runs")
    status = execute(run)
    assert status["state"] == "done", status
    return run


def all_json_parses(run: Run):
    for f in run.path.rglob("*.json"):
        json.loads(f.read_text())
    for line in (run.path / "metrics.jsonl").read_text().splitlines():
        json.loads(line)


def test_a_finished_run_is_complete(done_run):
    p = done_run.path
    for name in ("config.json", "status.json", "metrics.jsonl", "train.log", "summary.json", "model_facts.json",
                 "pairs_trained.csv", "pairs_control.csv", "adapter/adapter_config.json",
                 "adapter/adapter_model.safetensors", "checkpoints/epoch_1/adapter_config.json",
                 "checkpoints/epoch_2/adapter_config.json"):
        assert (p / name).is_file(), name
    assert done_run.protocols() == ["studio", "paper-text", "paper-code"]
    for protocol in done_run.protocols():
        for name in ("pairs.csv", "pairs_layers.csv", "curve.csv", "layer_stats.csv", "summary.json"):
            assert (p / "eval" / protocol / name).is_file(), (protocol, name)
    st = done_run.status()
    assert st["state"] == "done" and st["step"] == st["total_steps"] == 10
    assert {"torch", "transformers", "peft"} <= set(st["versions"])
    assert len(done_run.metrics()) == 10
    assert set(done_run.metrics().columns) >= {"loss", "lr", "pos_sim", "neg_sim", "grad_norm", "step_time"}
    assert TLIConfig.from_dict(done_run.config_dict()) == done_run.config()
    all_json_parses(done_run)
    assert not list(p.rglob(".*tmp*")) and not list(p.rglob(".*.json.*"))


def test_summary_statistics_match_scipy_on_the_stored_table(done_run):
    summary = done_run.summary()
    pairs = done_run.table("pairs")
    assert summary["eval_layer"] == 3 and summary["eval_layer_name"] == "block 3"
    for group in ("trained", "control"):
        g = pairs[pairs["set"] == group]
        s = summary["groups"][group]
        t, p = sps.ttest_rel(g["after"], g["before"])
        assert s["n"] == len(g) == (18 if group == "trained" else 6)
        assert s["mean_before"] == pytest.approx(g["before"].mean())
        assert s["mean_after"] == pytest.approx(g["after"].mean())
        assert s["t"] == pytest.approx(t) and s["p"] == pytest.approx(p)
        assert s["wilcoxon_p"] == pytest.approx(sps.wilcoxon(g["after"], g["before"]).pvalue)
    assert summary["train"]["gradient_blocks"] == [1, 2]  # only blocks up to the target layer learn
    curve = done_run.table("curve")
    assert set(curve["phase"]) == {"before", "after"} and set(curve["layer"]) == set(range(5))
    layers = done_run.table("pairs_layers")
    at_eval = layers[layers["layer"] == 3].reset_index(drop=True)
    np.testing.assert_allclose(at_eval["after"], pairs["after"], atol=1e-12)


def test_saved_adapter_reproduces_the_after_similarities(done_run, tiny_model_dir):
    from peft import PeftModel

    from tli_core.embeddings import embed
    from tli_core.models import load_model

    lm = load_model(ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"))
    model = PeftModel.from_pretrained(lm.model, str(done_run.adapter_dir))
    model.eval()
    pairs = done_run.table("pairs", protocol="paper-text")  # layer L-1 = 3, mean pooling, adapter attached
    sw = embed(model, lm.tokenizer, list(pairs["swahili"]), layers=[3]).at(3)
    en = embed(model, lm.tokenizer, list(pairs["english"]), layers=[3]).at(3)
    np.testing.assert_allclose((sw * en).sum(1).numpy(), pairs["after"], atol=1e-5)
    # and with the adapter disabled it gives "before": the adapter really changed something
    with model.disable_adapter():
        base_sw = embed(model, lm.tokenizer, list(pairs["swahili"]), layers=[3]).at(3)
        base_en = embed(model, lm.tokenizer, list(pairs["english"]), layers=[3]).at(3)
    np.testing.assert_allclose((base_sw * base_en).sum(1).numpy(), pairs["before"], atol=1e-5)
    assert not torch.allclose(base_sw, sw, atol=1e-4)


def test_evaluate_command_recomputes_the_same_tables(done_run, capsys):
    from tli_core.cli import main

    before = done_run.table("pairs")
    assert main(["evaluate", "--run", done_run.id, "--runs-dir", str(done_run.path.parent), "--quiet"]) == 0
    after = done_run.table("pairs")
    np.testing.assert_allclose(after["after"], before["after"], atol=1e-5)
    out = capsys.readouterr().out
    assert "trained" in out and "control" in out and "p (paired t)" in out


def test_foreground_evaluate_and_downstream_go_through_the_job_runner(done_run, capsys):
    """With another job holding the runs directory, the CLI says so in one line and writes nothing into the run
    (it used to start, fail to take the lock, and record a failed evaluation in the run's status)."""
    from tli_core.cli import main
    from tli_core.jobs.process import JobLock

    status_before = (done_run.path / "status.json").read_text()
    lock = JobLock(done_run.path.parent)
    assert lock.acquire("another training, pid 1")
    try:
        for args in (["evaluate", "--quiet"], ["downstream", "--tasks", "tli_word_choice_sw_en", "--quiet"]):
            assert main([args[0], "--run", done_run.id, "--runs-dir", str(done_run.path.parent), *args[1:]]) == 2
            err = capsys.readouterr().err
            assert "a job is already running (another training, pid 1)" in err and "Traceback" not in err
    finally:
        lock.release()
    assert (done_run.path / "status.json").read_text() == status_before


def test_list_table_diff_zip_delete(done_run, tiny_model_dir, pair_files):
    runs_dir = done_run.path.parent
    table = runs_table(runs_dir)
    row = table[table["run"] == done_run.id].iloc[0]
    assert row["state"] == "done" and row["target layers"] == "2" and row["rank"] == 16
    assert row["control % change"] == pytest.approx(done_run.summary()["groups"]["control"]["pct_change"])
    other = create_run(tiny_config(tiny_model_dir, pair_files, lora_r=4, target_layers=[1]), runs_dir)
    diff = diff_configs(done_run, other)
    assert set(diff["setting"]) >= {"lora_r", "target_layers"}
    assert "epochs" not in set(diff["setting"])
    with zipfile.ZipFile(io.BytesIO(done_run.weights_zip())) as zf:
        names = zf.namelist()
    assert f"{done_run.id}/adapter/adapter_model.safetensors" in names and f"{done_run.id}/config.json" in names
    with pytest.raises(TLIError, match="no saved weights"):
        other.weights_zip()
    delete_run(other)
    assert other.id not in [r.id for r in list_runs(runs_dir)]


def wait_for(predicate, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def start_long_run(tmp_path, tiny_model_dir, pair_files):
    run = create_run(tiny_config(tiny_model_dir, pair_files, epochs=500, batch_size=4), tmp_path / "runs")
    pid = spawn_worker("worker", run.path, run.log_path)
    assert wait_for(lambda: len(run.metrics()) >= 3), run.log_tail()
    return run, pid


def test_stop_mid_run_leaves_stopped_and_a_loadable_adapter(tmp_path, tiny_model_dir, pair_files):
    from peft import PeftModel

    from tli_core.models import load_model

    run, pid = start_long_run(tmp_path, tiny_model_dir, pair_files)
    assert busy_message(run.path.parent)  # a second job would be refused
    run.request_stop()
    assert wait_for(lambda: run.status()["state"] == "stopped"), run.log_tail()
    st = run.status()
    assert 3 <= st["step"] < st["total_steps"]
    lm = load_model(ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"))
    PeftModel.from_pretrained(lm.model, str(run.adapter_dir))
    all_json_parses(run)
    assert wait_for(lambda: busy_message(run.path.parent) is None, 20)


def test_sigkill_leaves_a_failed_run_and_no_half_written_json(tmp_path, tiny_model_dir, pair_files):
    run, pid = start_long_run(tmp_path, tiny_model_dir, pair_files)
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: run.status()["state"] == "failed", 20)
    assert "ended without finishing" in run.status()["message"]
    all_json_parses(run)
    assert wait_for(lambda: JobLock(run.path.parent).holder() is None, 10)  # the OS released the lock


_DYING = r"""
import ctypes, fcntl, os, sys, threading, time
fh = open(sys.argv[1], "a+"); fcntl.flock(fh, fcntl.LOCK_EX); fh.write("sweep s1, pid %d" % os.getpid()); fh.flush()
release = sys.argv[2]
def hold():  # the last thread: it keeps the process's files (and its lock) open until it exits (60 s at most)
    end = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < end:
        time.sleep(0.02)
    os._exit(0)
threading.Thread(target=hold).start()
print("ready", flush=True)
ctypes.CDLL(None, use_errno=True).syscall({"x86_64": 60, "aarch64": 93}[os.uname().machine], 0)  # main thread exits
"""


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "aarch64") or not os.path.isdir("/proc"),
                    reason="needs Linux /proc and a known exit syscall")
def test_a_killed_process_whose_threads_are_still_exiting_is_not_gone_yet(tmp_path):
    """A killed process's main thread reads 'Z' before its other threads have exited and before the OS has closed
    its files; CI resumed a sweep in that moment and was refused by the dead driver's lock."""
    import subprocess
    import sys
    import threading

    from tli_core.jobs.process import process_alive, process_tag

    runs_dir, release = tmp_path / "runs", tmp_path / "release"
    runs_dir.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", _DYING, str(runs_dir / ".lock-probe"), str(release)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    threading.Thread(target=proc.wait, daemon=True).start()
    try:
        assert wait_for(lambda: Path(f"/proc/{proc.pid}/stat").read_text().split(") ")[1][0] == "Z", 10)
        tag = process_tag(proc.pid)
        assert tag is not None and process_alive(tag)  # the leader is a zombie, a thread still runs: not gone
    finally:
        release.touch()  # a failed assertion never leaves the process behind
    assert wait_for(lambda: not process_alive(tag), 10)
    proc.wait(10)


class _FakeSweep:
    def __init__(self, runs_dir, process):
        self.id, self.runs_dir, self._process = "s1", runs_dir, process

    def raw_status(self):
        return {"process": self._process}


def test_resume_waits_while_the_dead_drivers_lock_is_being_released_but_not_for_a_live_one(tmp_path):
    import threading

    from tli_core.jobs.process import my_process_tag
    from tli_core.jobs.runner import _wait_for_dead_driver

    runs_dir = tmp_path / "runs"
    lock = JobLock(runs_dir)
    assert lock.acquire("sweep s1, pid 99999999")
    threading.Timer(1.0, lock.release).start()  # the OS lets go of a dead driver's lock a moment later
    started = time.monotonic()
    _wait_for_dead_driver(_FakeSweep(runs_dir, "99999999:1"))
    assert JobLock(runs_dir).holder() is None and time.monotonic() - started >= 0.9
    assert lock.acquire("sweep s1, pid 99999999")
    try:
        started = time.monotonic()
        _wait_for_dead_driver(_FakeSweep(runs_dir, my_process_tag()))  # a live driver: no waiting, refused later
        assert time.monotonic() - started < 0.5 and "sweep s1" in busy_message(runs_dir)
    finally:
        lock.release()


def test_one_training_job_at_a_time(tmp_path, tiny_model_dir, pair_files):
    runs_dir = tmp_path / "runs"
    lock = JobLock(runs_dir)
    assert lock.acquire("a test holding the GPU")
    try:
        run = create_run(tiny_config(tiny_model_dir, pair_files), runs_dir)
        status = execute(run)
        assert status["state"] == "failed" and "one job at a time" in status["message"]
        assert "a test holding the GPU" in busy_message(runs_dir)
    finally:
        lock.release()
    assert busy_message(runs_dir) is None


def unevaluated_copy(done_run, tmp_path) -> Run:
    """A copy of a finished run as a stopped run whose adapter was never evaluated."""
    import shutil

    path = tmp_path / "runs" / "stopped-run"
    shutil.copytree(done_run.path, path)
    (path / "summary.json").unlink()
    run = Run(path)
    run.update_status(state="stopped", message="stopped by request", evaluation=None)
    return run


def test_evaluating_a_saved_adapter_from_the_dashboard(done_run, tmp_path):
    run = unevaluated_copy(done_run, tmp_path)
    assert run.evaluation() == {}
    start_evaluation(run)
    # running from the first instant, so the page shows progress instead of a second button
    assert run.is_evaluating() and run.evaluation()["process"]
    assert busy_message(run.path.parent) is None or "evaluation of run" in busy_message(run.path.parent)
    with pytest.raises(TLIError, match="being evaluated"):
        delete_run(run)
    assert wait_for(lambda: not run.is_evaluating(), 120), run.log_tail()
    ev = run.evaluation()
    assert ev["state"] == "done", ev
    assert run.raw_status()["state"] == "stopped"  # training's outcome is not rewritten
    np.testing.assert_allclose(run.table("pairs")["after"], done_run.table("pairs")["after"], atol=1e-5)
    assert run.summary()["groups"]["control"]["n"] == done_run.summary()["groups"]["control"]["n"]


def test_evaluation_waits_for_the_job_lock_and_a_dead_evaluator_shows_as_failed(done_run, tmp_path):
    from tli_core.worker import evaluate_run

    run = unevaluated_copy(done_run, tmp_path)
    lock = JobLock(run.path.parent)
    assert lock.acquire("a training job")
    try:
        with pytest.raises(TLIError, match="one job at a time"):
            evaluate_run(run)
    finally:
        lock.release()
    ev = run.evaluation()
    assert ev["state"] == "failed" and "a training job" in ev["message"]
    assert run.summary() is None
    # an evaluator killed mid-way (its process gone) lists as failed, not as evaluating forever
    run.update_status(evaluation={"state": "running", "phase": "embedding after", "process": "999999999:1"})
    assert not run.is_evaluating()
    assert "ended without finishing" in run.evaluation()["message"]
    assert run.raw_status()["evaluation"]["state"] == "running"  # derived by the reader, never written by it


def test_the_settings_diff_lists_only_what_acted_differently(done_run, tiny_model_dir, tmp_path):
    """Two runs whose settings act alike differ in nothing: the same pairs under another file name, the evaluation
    layer by name ("paper") and by its number, a default left out of config.json and given explicitly."""
    import json
    import shutil

    from tli_core.runs import results_side_by_side

    cfg = done_run.config_dict()
    trained, control = tmp_path / "renamed_trained.csv", tmp_path / "renamed_control.csv"
    shutil.copy(cfg["trained_pairs"], trained)
    shutil.copy(cfg["control_pairs"], control)
    resolved = done_run.status()["resolved"]["eval_layer"]
    twin = create_run(TLIConfig.from_dict(dict(cfg, trained_pairs=str(trained), control_pairs=str(control),
                                               eval_layer=resolved)), tmp_path / "runs")
    older = json.loads((twin.path / "config.json").read_text())
    del older["weight_decay"]  # written before the setting existed: it ran with the default
    (twin.path / "config.json").write_text(json.dumps(older))
    assert cfg["eval_layer"] == "paper" and cfg["weight_decay"] == TLIConfig().weight_decay
    assert diff_configs(done_run, twin).empty
    every = diff_configs(done_run, twin, only_different=False).set_index("setting")
    assert "renamed_trained.csv" in every.loc["trained_pairs", twin.id] and str(resolved) in every.loc[
        "eval_layer", done_run.id]
    other = create_run(TLIConfig.from_dict(dict(cfg, lora_r=4)), tmp_path / "runs")
    assert list(diff_configs(done_run, other)["setting"]) == ["lora_r"]
    subset = create_run(TLIConfig.from_dict(dict(cfg, control_subset=4)), tmp_path / "runs")
    shown = diff_configs(done_run, subset).set_index("setting")  # an unset subset reads as what it means
    assert cfg["control_subset"] is None and shown.loc["control_subset"].tolist() == ["all", "4"]
    assert "null" not in diff_configs(done_run, subset, only_different=False).to_csv()
    results = results_side_by_side([done_run, other])  # the unevaluated run is on the table, marked
    assert set(results["run"]) == {done_run.id, other.id}
    assert results.set_index("run").loc[other.id, "verdict"].startswith("not evaluated")
