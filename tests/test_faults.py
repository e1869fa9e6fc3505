"""The fault suite: concurrency, corrupt files, paths, a full disk, injected text, stops (issue 12).

Each test is one finding of the attack on the tool, and fails on the code before its fix.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import tli_core.files as files_module
from tests.conftest import WORDS, point_dashboard
from tli_core.alignment import scan
from tli_core.cli import main
from tli_core.config import TLIConfig
from tli_core.errors import TLIError
from tli_core.files import csv_bytes, escape_cell, read_csv, unescape_cell
from tli_core.models import ModelSpec
from tli_core.pairs import read_pairs
from tli_core.runs import Run, create_run, headline, list_runs, load_run, runs_table
from tli_core.worker import execute


def tiny_config(model_dir, d: Path, **changes) -> TLIConfig:
    t, c = d / "t.csv", d / "c.csv"
    if not t.exists():
        pd.DataFrame(WORDS[:18], columns=["swahili", "english"]).to_csv(t, index=False)
        pd.DataFrame(WORDS[18:], columns=["swahili", "english"]).to_csv(c, index=False)
    base = dict(model=ModelSpec(model=str(model_dir), quantization="fp32", device="cpu"), trained_pairs=str(t),
                control_pairs=str(c), batch_size=4, epochs=2, warmup_steps=1, learning_rate=1e-2)
    return TLIConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def done(tiny_model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    run = create_run(tiny_config(tiny_model_dir, d), d / "runs", name="good")
    assert execute(run)["state"] == "done"
    return run


# --------------------------------------------------------------------------- 1. concurrent sessions

@pytest.mark.parametrize("precision", ["float32", "compute"])
def test_concurrent_scans_of_one_model_equal_single_session_scans_bit_for_bit(tiny, precision):
    # "compute" takes the model lock only inside the embedding pass (float32 analysis holds it for the whole
    # scan), so it is the case that catches hooks installed outside the lock
    sets = [{"trained": pd.DataFrame(WORDS[i:i + 8], columns=["swahili", "english"])} for i in (0, 6, 12)]
    kw = dict(precision=precision, check_sample=0)
    alone = [scan(tiny.model, tiny.tokenizer, s, seed=i, batch_size=2 + i, **kw).pairs for i, s in enumerate(sets)]
    results, errors = {}, []

    def session(i):
        try:
            for repeat in range(4):
                results[(i, repeat)] = scan(tiny.model, tiny.tokenizer, sets[i], seed=i, batch_size=2 + i, **kw).pairs
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=session, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for (i, _), table in results.items():
        cols = [c for c in table if c.startswith("layer_")]
        np.testing.assert_array_equal(table[cols].to_numpy(), alone[i][cols].to_numpy())
        assert list(table["swahili"]) == list(alone[i]["swahili"])


# --------------------------------------------------------------------------- 2. corrupt run files

@pytest.mark.parametrize("name, content, reason", [
    ("status.json", '{"state": "runn', "status.json"),
    ("status.json", "", "status.json"),
    ("status.json", "[1, 2]", "expected a JSON dict"),
    ("config.json", "{not json", "config.json"),
    ("config.json", '{"lora_r": "many"}', "config.json"),
    ("summary.json", '{"groups": 5}', "summary.json"),
    # valid JSON of the wrong shapes (each raised inside the reader before)
    ("status.json", '{"state": "running", "process": 123}', None),
    ("summary.json", '{"groups": {}, "protocols": ["studio"]}', "summary.json"),
    ("config.json", '{"model": [1]}', "config.json"),
    ("config.json", '{"target_layers": 2.5}', "config.json"),
    ("status.json", '{"state": "done", "evaluation": [1], "downstream": "x"}', None),
])
def test_a_corrupt_run_file_is_listed_as_unreadable_and_nothing_else_breaks(done, tmp_path, capsys, name, content,
                                                                            reason):
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(done.path, runs / "broken")
    shutil.copytree(done.path, runs / "fine")
    (runs / "broken" / name).write_text(content)
    table = runs_table(runs).set_index("run")
    if reason is None:  # readable, only odd: listed without a crash, the odd field ignored
        assert table.loc["broken", "state"] in ("running", "failed", "done")
    else:
        assert table.loc["broken", "state"] == "unreadable" and reason in table.loc["broken", "message"]
    assert table.loc["fine", "state"] == "done"
    assert main(["runs", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "fine" in out and (reason is None or "unreadable" in out)
    assert "None" not in out and "nan" not in out.lower()  # what is unknown reads "—"
    row = headline(Run(runs / "broken"))
    assert (row["state"] == "unreadable") == (reason is not None)
    for job in ("evaluation", "downstream"):
        assert isinstance(Run(runs / "broken").side_job(job), dict)


def test_pages_work_with_a_corrupt_run_present(done, tmp_path, monkeypatch, tiny_model_dir):
    import shutil

    from tests.test_app import open_page

    runs = tmp_path / "runs"
    shutil.copytree(done.path, runs / "broken")
    (runs / "broken" / "status.json").write_text("[]")
    (runs / "broken" / "summary.json").write_text('{"groups": 5}')
    point_dashboard(monkeypatch, runs, tiny_model_dir)
    for page in (None, "pages/scan.py", "pages/train.py", "pages/compare.py", "pages/runs.py",
                 "pages/embedding_map.py", "pages/probes.py"):
        open_page(page)  # asserts no exception on the page


# --------------------------------------------------------------------------- 3./4. run ids and names

@pytest.mark.parametrize("bad", ["../escaped", "/etc", "a/b", "..", ".hidden", ""])
def test_commands_name_runs_by_id_only(done, tmp_path, capsys, bad):
    runs = done.path.parent
    outside = tmp_path / "victim"
    outside.mkdir()
    (outside / "config.json").write_text("{}")  # looks like a run (every HF model directory does)
    target = str(outside) if bad == "/etc" else bad
    for args in (["runs", "--delete", target], ["runs", "--stop", target], ["evaluate", "--run", target]):
        assert main(args + ["--runs-dir", str(runs)]) == 2, args
        assert capsys.readouterr().err.startswith("error: ")
    assert (outside / "config.json").is_file() and not (outside / "STOP").exists()
    assert done.path.is_dir()


def test_run_names_are_checked_before_anything_is_created(tiny_model_dir, tmp_path, capsys):
    runs = tmp_path / "runs"
    config = tiny_config(tiny_model_dir, tmp_path)
    for name in ("../escaped", "a/b", "..", "x" * 101):
        with pytest.raises(TLIError, match="not allowed"):
            create_run(config, runs, name=name)
    assert main(["train", "--config", "/dev/null", "--name", "../escaped", "--runs-dir", str(runs)]) == 2
    assert not (tmp_path / "escaped").exists()
    assert not runs.exists() or not [p for p in runs.iterdir()]
    run = create_run(config, runs, name="b")
    assert run.id == "b"
    with pytest.raises(TLIError, match="exists already"):
        create_run(config, runs, name="b")


def test_an_adapter_from_outside_the_run_is_refused_before_any_work(done, capsys):
    for adapter in ("/tmp", "../..", "../good/adapter", "checkpoints/epoch_9"):
        assert main(["evaluate", "--run", done.id, "--runs-dir", str(done.path.parent), "--adapter", adapter]) == 2
        err = capsys.readouterr().err
        assert "has no trained weights" in err and "checkpoints/epoch_1" in err and "Traceback" not in err
    assert done.evaluation() == {}  # refused before the lock, the model or any status write


# --------------------------------------------------------------------------- 5. a full disk

def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("site", ["write_bytes", "copyfile", "rename"])
def test_creating_a_run_on_a_full_disk_leaves_nothing_and_the_name_free(tiny_model_dir, tmp_path, monkeypatch,
                                                                        done, site):
    import shutil

    import tli_core.runs as runs_module

    runs = tmp_path / "runs"
    config = tiny_config(tiny_model_dir, tmp_path)
    target = {"write_bytes": (files_module, "write_bytes"), "copyfile": (shutil, "copyfile"),
              "rename": (runs_module.os, "rename")}[site]
    with monkeypatch.context() as m:
        m.setattr(*target, enospc)
        with pytest.raises(TLIError, match="No space left on device") as err:
            create_run(config, runs, name="full", adapter_from=done.adapter_dir)
    assert "full" in str(err.value) and str(runs) in str(err.value)
    assert [p.name for p in runs.iterdir()] == []  # no .full.creating-* left
    assert create_run(config, runs, name="full").id == "full"  # and the name is free


@pytest.mark.parametrize("failure", [enospc, KeyboardInterrupt])
def test_creating_a_sweep_that_fails_midway_leaves_nothing(tiny_model_dir, tmp_path, monkeypatch, failure):
    import tli_core.sweeps as sweeps_module
    from tli_core.sweeps import SweepSpec, create_sweep

    def fail(*args, **kwargs):
        if failure is KeyboardInterrupt:
            raise KeyboardInterrupt
        enospc()

    spec = SweepSpec(base=tiny_config(tiny_model_dir, tmp_path), target_layers=[[1]], ranks=[2], placements=["all"])
    runs = tmp_path / "runs"
    with monkeypatch.context() as m:
        m.setattr(sweeps_module, "write_json", fail)
        with pytest.raises(TLIError if failure is enospc else KeyboardInterrupt):
            create_sweep(spec, runs, name="s1")
    assert list((runs / "sweeps").iterdir()) == []  # no .s1.creating-* left (an interrupt left it before)
    assert create_sweep(spec, runs, name="s1").id == "s1"


def test_a_full_disk_during_training_fails_the_run_with_one_line_and_no_temporaries(tiny_model_dir, tmp_path,
                                                                                     monkeypatch):
    from peft import PeftModel

    runs = tmp_path / "runs"
    run = create_run(tiny_config(tiny_model_dir, tmp_path), runs)
    monkeypatch.setattr(PeftModel, "save_pretrained", enospc)
    status = execute(run)
    assert status["state"] == "failed"
    assert status["message"].startswith("could not save the trained weights to")
    assert "No space left" in status["message"]
    assert not list(run.path.rglob(".*tmp*"))
    assert json.loads((run.path / "status.json").read_text())["state"] == "failed"


def test_a_full_disk_for_metrics_or_tables_fails_the_run_cleanly(tiny_model_dir, tmp_path, monkeypatch):
    import tli_core.evaluation as evaluation_module

    runs = tmp_path / "runs"
    run = create_run(tiny_config(tiny_model_dir, tmp_path), runs)
    monkeypatch.setattr(evaluation_module, "write_csv", enospc)
    status = execute(run)
    assert status["state"] == "failed" and "No space left on device" in status["message"]
    run2 = create_run(tiny_config(tiny_model_dir, tmp_path), runs)
    monkeypatch.setattr(Run, "append_metric", lambda self, row: (_ for _ in ()).throw(
        TLIError("could not write metrics.jsonl: No space left on device")))
    assert execute(run2)["state"] == "failed"


def test_a_status_write_on_a_full_disk_does_not_become_a_traceback(tiny_model_dir, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    run = create_run(tiny_config(tiny_model_dir, tmp_path), runs)
    real = Run.update_status
    calls = []

    def flaky(self, **changes):
        calls.append(changes.get("state"))
        if changes.get("phase") == "embedding before":
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path / "status.json"))
        return real(self, **changes)

    monkeypatch.setattr(Run, "update_status", flaky)
    status = execute(run)
    assert status["state"] == "failed" and "No space left on device" in status["message"]


def test_an_interrupted_checkpoint_save_leaves_the_last_checkpoint_loadable(tiny_model_dir, tmp_path, monkeypatch):
    """kill -9 in the middle of a save, simulated: the save is cut off after writing part of its files."""
    from peft import PeftModel

    runs = tmp_path / "runs"
    run = create_run(tiny_config(tiny_model_dir, tmp_path, epochs=3), runs)
    real = PeftModel.save_pretrained
    saves = []

    def cut_off(self, path, *args, **kwargs):
        saves.append(path)
        if len(saves) == 2:  # the second epoch's checkpoint
            Path(path).mkdir(parents=True, exist_ok=True)
            (Path(path) / "adapter_config.json").write_text("{")  # half written
            raise KeyboardInterrupt
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(PeftModel, "save_pretrained", cut_off)
    with pytest.raises(KeyboardInterrupt):
        execute(run)
    assert [p.name for p in run.checkpoints()] == ["epoch_1"]  # no half checkpoint is visible
    assert not list(run.path.rglob(".*tmp*"))
    from tli_core.models import load_model

    lm = load_model(ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"))
    monkeypatch.setattr(PeftModel, "save_pretrained", real)
    PeftModel.from_pretrained(lm.model, str(run.checkpoints()[0]))


def test_a_real_kill_mid_save_leaves_a_temporary_that_the_next_save_removes(done, tmp_path):
    """kill -9 runs no cleanup: its ``.NAME.tmpPID`` stays until a later save sees that PID is gone."""
    import shutil
    import subprocess
    import sys

    run = Run(shutil.copytree(done.path, tmp_path / "r"))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = run.path / "checkpoints" / f".epoch_2.tmp{int(gone.stdout)}"
    alive = run.path / "checkpoints" / f".epoch_3.tmp{os.getppid()}"  # a live process that is not us
    for d in (dead, alive):
        d.mkdir(parents=True)
        (d / "adapter_config.json").write_text("{")
    run.save_weights(lambda d: (d.mkdir(), (d / "w.bin").write_bytes(b"x")), run.path / "checkpoints" / "epoch_4")
    assert not dead.exists() and alive.exists()
    assert (run.path / "checkpoints" / "epoch_4" / "w.bin").read_bytes() == b"x"


# --------------------------------------------------------------------------- 7. spreadsheets

def test_streamlits_own_table_export_is_off():
    """Streamlit's table toolbar writes cells as they are ("=HYPERLINK(...)" from a third party's word list);
    the server's settings turn it off, and every table has the app's own CSV button (csv_bytes, below)."""
    import tomllib

    from tests.conftest import ROOT

    settings = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert settings["client"]["disableDataExport"] is True


def test_csv_exports_neutralise_formulas_and_round_trip():
    df = pd.DataFrame({"swahili": ["=1+1", "+cmd", "-x", "@SUM(A1)", "'=already", "plain", "'quote"],
                       "english": ["a", "b", "c", "d", "e", "f", "g"], "value": [-1.5, 2.0, 3, 4, 5, 6, 7]})
    text = csv_bytes(df).decode()
    for line in text.splitlines()[1:]:
        assert not line.startswith(("=", "+", "-", "@")), line
    assert "'=1+1" in text and "''=already" in text and "\n'quote," in text and ",-1.5" in text
    back = read_csv(csv_bytes(df))
    pd.testing.assert_frame_equal(back, df)
    assert all(unescape_cell(escape_cell(s)) == s for s in ["=", "'", "''=", "'a", "-", "a=b"])
    pairs, _ = read_pairs(csv_bytes(df[["swahili", "english"]]), source="export.csv")
    assert list(pairs["swahili"]) == list(df["swahili"])  # a downloaded set uploads back unchanged


def test_run_tables_on_disk_are_spreadsheet_safe(done):
    from tli_core.files import write_csv

    write_csv(done.path / "probe.csv", pd.DataFrame({"swahili": ["=evil"], "x": [1]}))
    assert (done.path / "probe.csv").read_text().splitlines()[1].startswith("'=")
    for csv_path in done.eval_dir.rglob("*.csv"):
        for line in csv_path.read_text().splitlines()[1:]:
            assert not line.startswith(("=", "+", "@")), csv_path


# --------------------------------------------------------------------------- 9. stops and settings

def test_a_stop_before_training_ends_stopped_without_an_adapter_and_is_consumed(tiny_model_dir, tmp_path):
    run = create_run(tiny_config(tiny_model_dir, tmp_path), tmp_path / "runs")
    run.request_stop()
    status = execute(run)
    assert status["state"] == "stopped" and "no adapter" in status["message"]
    assert not run.has_adapter() and not (run.path / "STOP").exists()


def test_a_stop_during_the_embedding_pass_is_honoured_between_forwards(tiny_model_dir, tmp_path, monkeypatch):
    import tli_core.worker as worker_module

    run = create_run(tiny_config(tiny_model_dir, tmp_path), tmp_path / "runs")
    real = worker_module.embed_sets

    def slow_embed(*args, **kwargs):
        run.request_stop()  # the user clicks Stop while the words are being embedded
        return real(*args, **kwargs)

    monkeypatch.setattr(worker_module, "embed_sets", slow_embed)
    status = execute(run)
    assert status["state"] == "stopped" and "embedding before" in status["message"]
    assert not run.has_adapter() and not (run.path / "STOP").exists()


def test_sigterm_before_the_first_step_saves_no_fake_adapter(tiny_model_dir, tmp_path, monkeypatch):
    import tli_core.worker as worker_module

    run = create_run(tiny_config(tiny_model_dir, tmp_path), tmp_path / "runs")
    real = worker_module.train

    def signalled(peft_model, tokenizer, trained, config, resolved, **kwargs):
        kwargs["should_stop"].signalled = True  # SIGTERM arrives as training starts
        return real(peft_model, tokenizer, trained, config, resolved, **kwargs)

    monkeypatch.setattr(worker_module, "train", signalled)
    status = execute(run)
    assert status["state"] == "stopped" and "no adapter" in status["message"] and not run.has_adapter()


@pytest.mark.parametrize("extra, message", [
    (["--grad-clip", "abc"], "--grad-clip must be a positive number or none"),
    (["--margin", "inf"], "triplet margin must be a finite number"),
    (["--lr", "nan"], "learning rate must be a finite number"),
    (["--target-layers", "-99"], "target layer -99 (counted from the end) is outside"),
    (["--target-modules", "nosuch"], "target module(s) nosuch do not exist"),
])
def test_bad_settings_are_refused_before_a_model_loads_or_a_run_exists(tiny_model_dir, tmp_path, capsys, monkeypatch,
                                                                       extra, message):
    import tli_core.worker as worker_module

    monkeypatch.setattr(worker_module, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    t, c = tmp_path / "t.csv", tmp_path / "c.csv"
    pd.DataFrame(WORDS[:18], columns=["swahili", "english"]).to_csv(t, index=False)
    pd.DataFrame(WORDS[18:], columns=["swahili", "english"]).to_csv(c, index=False)
    runs = tmp_path / "runs"
    code = main(["train", "--model", str(tiny_model_dir), "--quant", "fp32", "--device", "cpu", "--pairs", str(t),
                 "--control", str(c), "--runs-dir", str(runs)] + extra)
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not runs.exists() or not list(runs.iterdir())


def test_hostile_pair_files_get_one_clear_error(tmp_path, monkeypatch):
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(TLIError, match="nested too deeply"):
        read_pairs(deep.encode(), source="deep.json")
    with pytest.raises(TLIError, match="swahili more than once"):
        read_pairs(b"swahili,english,swahili\nmaji,water,moto\n", source="twice.csv")
    # the same column under another spelling or an alias kept the last one silently before
    for header in ("Swahili,english,swahili ", "source,english,swahili"):
        with pytest.raises(TLIError, match="both name the swahili words"):
            read_pairs(f"{header}\nmaji,water,moto\n".encode(), source="twice.csv")
    for text, source in (('[{"swahili": "maji", "english": "water", "swahili": "moto"}]', "twice.json"),
                         ('{"swahili": "maji", "english": "water", "swahili": "moto"}\n', "twice.jsonl")):
        with pytest.raises(TLIError, match="'swahili' more than once"):
            read_pairs(text.encode(), source=source)
    monkeypatch.setenv("TLI_MAX_PAIRS", "5")
    rows = "".join(f"w{i},e{i}\n" for i in range(6))
    with pytest.raises(TLIError, match="more than 5 pairs.*TLI_MAX_PAIRS"):
        read_pairs(("swahili,english\n" + rows).encode(), source="big.csv")


def test_the_train_page_reattaches_to_the_newest_run_by_creation_not_by_name(done, tmp_path, monkeypatch,
                                                                             tiny_model_dir):
    import shutil

    from tests.test_app import open_page

    runs = tmp_path / "runs"
    shutil.copytree(done.path, runs / "k9-older")
    st_path = runs / "k9-older" / "status.json"
    st = json.loads(st_path.read_text())
    st_path.write_text(json.dumps(dict(st, created="2020-01-01T00:00:00", created_ns=1)))
    shutil.copytree(done.path, runs / "a1-newer")
    point_dashboard(monkeypatch, runs, tiny_model_dir)
    at = open_page("pages/train.py")
    assert any("a1-newer" in s.value.replace("\\", "") for s in at.subheader), [s.value for s in at.subheader]
    assert [r.id for r in list_runs(runs)] == ["k9-older", "a1-newer"]  # name order would pick k9
    assert load_run("a1-newer", runs).id == "a1-newer"


def test_user_text_reaches_markdown_escaped(tiny_model_dir, tmp_path, monkeypatch):
    """Words and file names are shown as text: no Markdown link, image, HTML or LaTeX is built from them."""
    from streamlit.testing.v1 import AppTest

    from tests.test_app import ROOT, texts
    from tli_core import workspace

    point_dashboard(monkeypatch, tmp_path / "runs", tiny_model_dir)
    payload = "![t](http://127.0.0.1:9/x.png)"
    trained = pd.DataFrame({"swahili": [payload, "<img src=x>", "maji"], "english": ["a", "b", "water"]})
    control = pd.DataFrame({"swahili": [payload, ":red[x] $y$"], "english": ["c", "d"]})  # a shared headword
    _, report = read_pairs(csv_bytes(trained), source=f"{payload}.csv")
    t = workspace.save_pairs(trained, f"{payload}.csv", "trained", report.lines())
    c = workspace.save_pairs(control, "[x](http://e)", "control")
    sid = workspace.new_session_id()
    workspace.write_session(sid, {"sets": {"trained": t.hash, "control": c.hash}})  # as an upload leaves it
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.query_params["s"] = sid
    at.run()
    at.switch_page("pages/pairs.py").run()
    assert not at.exception
    shown = texts(at)
    assert "127.0.0.1:9" in shown.replace("\\", "")  # the words are there ...
    assert "different translations" in shown  # the shared headword is a warning, shown escaped too
    for unsafe in ("](http", "![", "<img", ":red[", "$y$"):
        assert unsafe not in shown, unsafe  # ... but only escaped: \!\[t\]\(http\:...




def test_a_run_whose_adapters_fail_to_attach_leaves_the_shared_model_as_it_was(tiny_model_dir, tmp_path,
                                                                                monkeypatch):
    """The worker's other half of issue 11's finding: PEFT injected its layers, then failed. The model a sweep
    or the server shares must come back without any of them."""
    import torch

    import tli_core.training as training_module
    import tli_core.worker as worker_module
    from tli_core.models import load_model

    lm = load_model(ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"))
    tree, state = str(lm.model), {k: v.clone() for k, v in lm.model.state_dict().items()}

    def half_way(model, config, resolved):
        training_module.attach(model, config, resolved)  # every LoRA layer injected ...
        raise RuntimeError("CUDA out of memory (simulated)")  # ... then the failure

    monkeypatch.setattr(worker_module, "attach", half_way)
    run = create_run(tiny_config(tiny_model_dir, tmp_path), tmp_path / "runs")
    status = execute(run, lm=lm)
    assert status["state"] == "failed" and "out of memory" in status["message"]
    assert str(lm.model) == tree and "lora" not in tree
    after = lm.model.state_dict()
    assert set(after) == set(state) and all(torch.equal(after[k], state[k]) for k in state)
