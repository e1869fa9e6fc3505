"""The fault suite, part two (issue 24): a full disk, and one bad file in one run or sweep.

Readers never write; a worker that cannot write still ends its run in a state a reader shows; every
damaged file reads as "unreadable: FILE: reason" in that run's (or sweep's) own view, and every other
run, sweep and page keeps working. Run directories are copies of one tiny trained run, damaged by hand.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import tli_core.files as files_module
from tests.conftest import ROOT, point_dashboard, trained_tiny_run
from tests.test_app import texts
from tli_core import workspace
from tli_core.cli import main
from tli_core.errors import TLIError
from tli_core.runs import Run, create_run, runs_table
from tli_core.worker import execute

DEAD = "999999999:1"  # a process tag no live process has


@pytest.fixture(scope="module")
def good(tiny_model_dir, tmp_path_factory) -> Run:
    """One finished run of the tiny model (its directory is copied, never changed)."""
    return trained_tiny_run(tiny_model_dir, tmp_path_factory.mktemp("good"), epochs=1)


@pytest.fixture
def runs(good, tmp_path, monkeypatch, tiny_model_dir) -> Path:
    """A runs directory holding a copy of the good run ('good'), the dashboard pointed at it."""
    runs = tmp_path / "runs"
    shutil.copytree(good.path, runs / "good")
    point_dashboard(monkeypatch, runs, tiny_model_dir)
    return runs


def copy_run(runs: Path, name: str, **status) -> Run:
    shutil.copytree(runs / "good", runs / name)
    run = Run(runs / name)
    if status:
        run.update_status(**status)
    return run


def page(path: str | None = None, **params) -> AppTest:
    """A page as a browser opens it from a link (``params``: the link's query parameters); no exception allowed."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    if path:
        at.switch_page(path)
        for k, v in params.items():
            at.query_params[k] = v
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def shown(at: AppTest) -> str:
    """The page's text as a user reads it (the Markdown escapes taken out)."""
    return texts(at).replace("\\", "")


def snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# --------------------------------------------------------------------------- 2. a full disk

def test_reads_never_write_and_a_dead_run_reads_failed_on_a_full_disk(runs, monkeypatch, capsys):
    workspace.default_pairsets()  # the workspace (shipped word pairs) exists before the disk fills
    dead = copy_run(runs, "dead", state="running", phase="training", process=DEAD,
                    evaluation={"state": "running", "phase": "embedding after", "process": DEAD})
    before = snapshot(runs / "dead")
    monkeypatch.setattr(files_module, "write_bytes", enospc)  # the disk is full: no atomic write succeeds
    assert dead.status()["state"] == "failed" and "ended without finishing" in dead.status()["message"]
    assert dead.evaluation()["state"] == "failed" and not dead.is_active()
    assert runs_table(runs).set_index("run").loc["dead", "state"] == "failed"
    assert main(["runs", "--runs-dir", str(runs)]) == 0
    assert "failed" in capsys.readouterr().out
    for path, params in ((None, {}), ("pages/runs.py", {"runs": "dead"}), ("pages/compare.py", {"run": "dead"})):
        page(path, **params)
    assert snapshot(runs / "dead") == before  # nothing was rewritten as failed by a reader
    assert json.loads((runs / "dead" / "status.json").read_text())["state"] == "running"
    monkeypatch.setattr("tli_core.jobs.jobdir.disk_full", lambda path: True)
    assert "the disk holding it is full" in dead.status()["message"]


def test_a_worker_that_cannot_write_records_its_end_in_place(runs, good, monkeypatch):
    run = create_run(good.config(), runs, name="full")
    full = {"now": False}
    real_write = files_module.write_bytes

    def write_bytes(*args, **kwargs):
        if full["now"]:
            enospc()
        return real_write(*args, **kwargs)

    def append_metric(self, row):  # the disk fills up during training
        full["now"] = True
        raise TLIError(f"could not write {self.path / 'metrics.jsonl'}: No space left on device")

    monkeypatch.setattr(files_module, "write_bytes", write_bytes)
    monkeypatch.setattr(Run, "append_metric", append_metric)
    status = execute(run)
    assert status["state"] == "failed" and "No space left on device" in status["message"]
    on_disk = json.loads((run.path / "status.json").read_text())  # not left 'running' for readers to rewrite
    assert on_disk["state"] == "failed" and "No space left on device" in on_disk["message"]
    assert not list(run.path.glob(".status.json.*"))


@pytest.mark.parametrize("argv, what", [
    (["report", "--run", "good", "--out", "{disk}/report.html"], "report.html"),
    (["compare", "--csv", "{runs}/table.csv", "--before", "before", "--after", "after", "--out",
      "{disk}/stats.csv"], "stats.csv"),
    (["runs", "--stop", "good"], "STOP"),
])
def test_commands_that_write_on_a_full_disk_say_so_in_one_line(runs, monkeypatch, capsys, argv, what):
    (runs / "table.csv").write_text("before,after\n0.1,0.3\n0.2,0.25\n0.3,0.5\n")
    monkeypatch.setattr(files_module, "write_bytes", enospc)
    monkeypatch.setattr(Path, "write_text", enospc)
    argv = [a.format(disk=runs.parent / "disk", runs=runs) for a in argv] + ["--runs-dir", str(runs)] * (
        argv[0] in ("report", "runs"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: could not") and what in err and "No space left on device" in err
    assert len(err.splitlines()) == 1


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def test_a_real_disk_filled_during_training(runs, good, tmp_path, monkeypatch, capsys):
    """A small tmpfs filled up after the first training step (where the machine lets a test mount one)."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "2m"):
        pytest.skip("cannot mount a tmpfs here (needs root); the injected-ENOSPC tests cover the same paths")
    try:
        run = create_run(good.config(), disk, name="filled")
        shutil.copytree(runs / "good", disk / "orphan")  # a worker on this disk that died without a word
        Run(disk / "orphan").update_status(state="running", process=DEAD)
        real_append = Run.append_metric

        def append_metric(self, row):
            if row["step"] == 2:  # fill the disk to the last byte
                with open(disk / "filler", "wb") as fh:
                    try:
                        while True:
                            fh.write(b"\0" * 65536)
                            fh.flush()
                    except OSError:
                        pass
            return real_append(self, row)

        monkeypatch.setattr(Run, "append_metric", append_metric)
        status = execute(run)
        assert status["state"] == "failed" and "No space left on device" in status["message"]
        assert json.loads((run.path / "status.json").read_text())["state"] == "failed"
        table = runs_table(disk).set_index("run")
        assert table.loc["filled", "state"] == "failed" and "No space left" in table.loc["filled", "message"]
        assert table.loc["orphan", "state"] == "failed" and "disk holding it is full" in table.loc["orphan",
                                                                                                    "message"]
        assert main(["runs", "--runs-dir", str(disk)]) == 0
        assert main(["runs", "--runs-dir", str(disk), "--stop", "orphan"]) == 2
        assert main(["report", "--run", "good", "--runs-dir", str(runs), "--out", str(disk / "r.html")]) == 2
        err = capsys.readouterr().err
        assert err.count("error: could not") == 2 and "No space left on device" in err
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


# --------------------------------------------------------------------------- 3./4. one damaged file

def _json(path: Path, change) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _metric_line(run: Path, text: bytes) -> None:
    with open(run / "metrics.jsonl", "ab") as fh:
        fh.write(text)


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


COMPARE, RUNS, TRAIN = ("pages/compare.py", {"run": "broken"}), ("pages/runs.py", {"runs": "broken"}), \
    ("pages/train.py", {})
DAMAGE = {  # case -> (how the copy 'broken' of the good run is damaged, the views that show it, what they say)
    "created_ns": (lambda r: _json(r / "status.json", lambda s: dict(s, created_ns="zz")), [COMPARE, RUNS],
                   "status.json: 'created_ns' is not a whole number"),
    "import": (lambda r: _json(r / "status.json", lambda s: dict(s, state="imported", **{"import": 5})),
               [RUNS], "status.json: 'import' is not a mapping"),
    "pairs": (lambda r: _json(r / "status.json", lambda s: dict(s, pairs="str")), [RUNS],
              "status.json: 'pairs' is not a mapping"),
    "versions": (lambda r: _json(r / "status.json", lambda s: dict(s, versions="x")), [RUNS],
                 "status.json: 'versions' is not a mapping"),
    "metrics-bytes": (lambda r: _metric_line(r, b'{"step": 9, "loss": 0.1\xff}\n'), [TRAIN],
                      "metrics.jsonl: not UTF-8 text"),
    "metrics-type": (lambda r: _metric_line(r, b'{"step": 9, "loss": 0.1, "lr": 0, "grad_norm": 1, '
                                                      b'"pos_sim": 0, "neg_sim": 0, "step_time": "x"}\n'),
                     [TRAIN], "metrics.jsonl: line 6: 'step_time' is not a number"),
    "summary-empty": (lambda r: (r / "summary.json").write_text('{"groups": {}}'), [COMPARE, RUNS],
                      "summary.json: no 'num_layers'"),
    "summary-layers": (lambda r: _json(r / "summary.json", lambda s: dict(s, protocols=dict(
        s["protocols"], studio={k: v for k, v in s["protocols"]["studio"].items() if k != "num_layers"}))),
                       [COMPARE], "summary.json: protocols.studio: no 'num_layers'"),
    "summary-protocol": (lambda r: _json(r / "summary.json", lambda s: dict(s, protocols={"studio": 5})),
                         [COMPARE], "summary.json: protocols.studio: expected a JSON mapping"),
    "summary-group": (lambda r: _json(r / "summary.json", lambda s: dict(s, groups={"control": {"n": 6}})),
                      [COMPARE], "summary.json: groups.control: no 'mean_before'"),
    "eval-missing": (lambda r: _remove(r / "eval"), [COMPARE], "eval/studio/pairs_layers.csv: missing"),
    "eval-garbage": (lambda r: (r / "eval" / "studio" / "curve.csv").write_bytes(b"\x00garbage;;\n1;2\n"),
                     [COMPARE], "eval/studio/curve.csv: no column"),
    "eval-text": (lambda r: (r / "eval" / "studio" / "pairs_layers.csv").write_text(
        "swahili,english,set,layer,before,after,change\nmaji,water,trained,x,0.1,0.2,0.1\n"), [COMPARE],
        "eval/studio/pairs_layers.csv: column 'layer' holds text"),
    "downstream": (lambda r: (r / "downstream").mkdir() or (r / "downstream" / "summary.json").write_text(
        '{"results": {"t": 5}}'), [COMPARE, RUNS], "downstream/summary.json: results.t: expected a JSON mapping"),
}
LISTED = {"created_ns", "import", "pairs", "versions", "summary-empty", "summary-layers", "summary-protocol",
          "summary-group"}  # damage the runs listing shows as the run's state


def damaged(runs: Path, case: str) -> Run:
    """A copy of the good run, created after it (the newest: the view Train follows), damaged as ``case`` says."""
    run = copy_run(runs, "broken", created_ns=Run(runs / "good").raw_status()["created_ns"] + 1)
    DAMAGE[case][0](run.path)
    return run


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_run_file_reads_as_unreadable_in_that_runs_views_only(runs, case, capsys):
    damaged(runs, case)
    _, views, said = DAMAGE[case]
    for path, params in views:
        at = page(path, **params)
        assert f"unreadable: {said}" in shown(at), (path, shown(at)[-600:])
    table = runs_table(runs).set_index("run")
    assert table.loc["good", "state"] == "done"
    if case in LISTED:
        assert table.loc["broken", "state"] == "unreadable" and said in table.loc["broken", "message"]
    capsys.readouterr()
    assert main(["runs", "--runs-dir", str(runs)]) == 0
    code = main(["report", "--run", "broken", "--runs-dir", str(runs), "--out", str(runs.parent / "r.html")])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    if code:  # a report needs every file it shows: refused in one line that says which and why
        assert code == 2 and len(errors) == 1 and said in errors[0]


def _sweep(runs: Path, name: str, good: Run):
    from tli_core.sweeps import SweepSpec, create_sweep

    return create_sweep(SweepSpec(base=good.config(), target_layers=[[1], [2]], ranks=[2]), runs, name=name)


SWEEP_DAMAGE = {
    "cells-empty": ("cells.json", "", "unreadable: cells.json: empty file"),
    "cells-truncated": ("cells.json", '[{"cell": 0, "unit": 0, "se', "unreadable: cells.json: "),
    "cells-wrong": ("cells.json", '[{"cell": "0", "state": "done"}]', "unreadable: cells.json: unit 0: 'cell'"),
}


@pytest.mark.parametrize("case", list(SWEEP_DAMAGE))
def test_a_damaged_sweep_file_reads_as_unreadable_in_that_sweeps_view_only(runs, good, case):
    _sweep(runs, "a-good", good)
    broken = _sweep(runs, "z-broken", good)  # the newest: the Sweeps page opens on it
    name, content, said = SWEEP_DAMAGE[case]
    (broken.path / name).write_text(content)
    assert said in shown(page("pages/sweeps.py")).replace("\\", "")
    at = page("pages/sweeps.py", sweep="a-good")
    assert "unreadable" not in shown(at) and at.dataframe  # the good sweep's units and results


def test_a_damaged_session_file_starts_that_session_afresh(runs):
    sid = "0123456789ab"
    sessions = runs.parent / "workspace" / "sessions"
    sessions.mkdir(parents=True)
    (sessions / f"{sid}.json").write_text('{"sets": "x"}')
    at = page(None, s=sid)
    assert f"unreadable: sessions/{sid}.json: 'sets' is not a mapping" in shown(at)
    assert at.metric[1].value.startswith("623 + 63")  # the shipped word pairs
    page("pages/train.py", s=sid)


def test_every_page_and_command_works_for_the_good_run_beside_every_damaged_one(runs, good):
    for i, case in enumerate(DAMAGE):
        shutil.copytree(runs / "good", runs / f"broken-{i}")
        DAMAGE[case][0](runs / f"broken-{i}")
    _sweep(runs, "a-good", good)
    (_sweep(runs, "z-broken", good).path / "cells.json").write_text("")
    assert page().metric[2].value == str(len(DAMAGE) + 1)  # Home counts every run
    at = page("pages/compare.py", run="good")
    assert list(dict.fromkeys(at.table[0].value["set"])) == ["trained", "control"]
    assert page("pages/runs.py", runs="good").dataframe[0].value.set_index("run").loc["good", "state"] == "done"
    for path, params in (("pages/train.py", {}), ("pages/embedding_map.py", {"run": "good"}),
                         ("pages/sweeps.py", {"sweep": "a-good"})):
        page(path, **params)
    assert main(["runs", "--runs-dir", str(runs)]) == 0
    assert main(["report", "--run", "good", "--runs-dir", str(runs), "--out", str(runs.parent / "r.html")]) == 0
