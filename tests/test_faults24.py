"""The fault suite of issue 24 (items 1, 5, 7): crafted adapters, DNS rebinding, and the smaller findings.

Each test is one finding of the attack on the tool, and fails on the code before its fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from tli_core.cli import main
from tli_core.errors import TLIError

# --------------------------------------------------------------------------- 1. crafted adapters

def fingerprint(model) -> tuple:
    """Parameter count, the module tree, and a checksum of every tensor (parameters and buffers)."""
    import torch

    digest = {name: hashlib.sha1(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
              for name, t in model.state_dict().items()}
    return sum(p.numel() for p in model.parameters()), str(model), digest


@pytest.fixture(scope="module")
def shared(tiny_model_dir):
    """The model a server shares between browser sessions (its own copy: these tests try to change it)."""
    from tli_core.models import ModelSpec, load_model

    return load_model(ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"))


@pytest.fixture(scope="module")
def good_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    """A plain LoRA adapter on q_proj/v_proj of the tiny model, as PEFT saves it."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tli_core.models import ModelSpec, load_model

    lm = load_model(ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"))
    torch.manual_seed(0)
    peft_model = get_peft_model(lm.model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                     task_type="CAUSAL_LM", init_lora_weights=False))
    out = tmp_path_factory.mktemp("adapters") / "good"
    peft_model.save_pretrained(out)
    return out


def crafted(good: Path, where: Path, config=None, text: str | None = None, extra_tensor: str | None = None) -> Path:
    """A copy of the good adapter with its config changed (``config``: keys to set) or replaced (``text``)."""
    out = where / "crafted"
    shutil.copytree(good, out)
    path = out / "adapter_config.json"
    if text is None:
        text = json.dumps(json.loads(path.read_text()) | (config or {}))
    path.write_text(text)
    if extra_tensor:
        import torch
        from safetensors.torch import load_file, save_file

        tensors = load_file(out / "adapter_model.safetensors")
        tensors[extra_tensor] = torch.zeros(4, 4)
        save_file(tensors, out / "adapter_model.safetensors")
    return out


DEEP = '{"peft_type": "LORA", "r": 2, "x": ' + "[" * 100_000 + "]" * 100_000 + "}"

CRAFTED = {
    "layer replication": dict(config={"layer_replication": [[0, 2], [0, 4]]}),
    "modules to save": dict(config={"modules_to_save": ["lm_head"]}),
    "modules-to-save weights": dict(extra_tensor="base_model.model.lm_head.weight"),
    "another peft type": dict(config={"peft_type": "LOHA"}),
    "a task that adds a head": dict(config={"task_type": "SEQ_CLS"}),
    "DoRA": dict(config={"use_dora": True}),
    "trainable tokens": dict(config={"trainable_token_indices": [1, 2]}),
    "init that rewrites the base": dict(config={"init_lora_weights": "pissa"}),
    "lm_head as a target": dict(config={"target_modules": ["lm_head"]}),
    "an unknown target": dict(config={"target_modules": ["q_proj", "v_proj", "no_such_proj"]}),
    "a regex target": dict(config={"target_modules": ".*"}),
    "dropout as text": dict(config={"lora_dropout": "abc"}),
    "dropout out of range": dict(config={"lora_dropout": 1.5}),
    "rank as text": dict(config={"r": "2"}),
    "layers with text": dict(config={"layers_to_transform": [1, "x"]}),
    "a layer the model lacks": dict(config={"layers_to_transform": [0, 99]}),
    "deeply nested JSON": dict(text=DEEP),
    "a JSON list": dict(text='[{"peft_type": "LORA"}]'),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_a_crafted_adapter_is_refused_with_one_line_and_the_shared_model_stays_bit_for_bit(shared, good_adapter,
                                                                                            tmp_path, case):
    from tli_core.trained import trained_model

    bad = crafted(good_adapter, tmp_path, **CRAFTED[case])
    before = fingerprint(shared.model)
    with pytest.raises(TLIError) as err:
        with trained_model(shared.model, bad):
            pass
    message = str(err.value)
    assert message and len(message.splitlines()) == 1 and len(message) < 400, message
    assert fingerprint(shared.model) == before


def test_a_plain_lora_adapter_still_loads_and_the_model_comes_back_exactly(shared, good_adapter):
    import torch

    from tli_core.trained import trained_model

    before = fingerprint(shared.model)
    ids = torch.tensor([[1, 3, 4, 5]])
    with torch.no_grad():
        base_out = shared.model(ids).logits
        with trained_model(shared.model, good_adapter) as tuned:
            tuned_out = tuned(ids).logits
    assert not torch.equal(base_out, tuned_out)  # the adapter did something ...
    assert fingerprint(shared.model) == before  # ... and was taken out again


def test_wrappers_peft_leaves_after_a_half_way_failure_are_taken_out(tiny_model_dir):
    """modules_to_save wraps lm_head; a load that fails after that must unwrap it (81.4M -> 109.7M parameters)."""
    from peft import LoraConfig, get_peft_model

    from tli_core.adapters import strip_adapters
    from tli_core.models import ModelSpec, load_model

    lm = load_model(ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"))
    before = fingerprint(lm.model)
    get_peft_model(lm.model, LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    strip_adapters(lm.model)
    assert fingerprint(lm.model) == before


@pytest.mark.parametrize("case", ["dropout as text", "layers with text", "deeply nested JSON", "a JSON list",
                                  "layer replication"])
def test_import_adapter_refuses_a_crafted_config_with_one_line_and_creates_no_run(good_adapter, tiny_model_dir,
                                                                                  tmp_path, capsys, case):
    bad = crafted(good_adapter, tmp_path, **CRAFTED[case])
    runs = tmp_path / "runs"
    assert main(["import-adapter", str(bad), "--model", str(tiny_model_dir), "--quant", "fp32", "--device", "cpu",
                 "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert not runs.exists() or not [p for p in runs.iterdir() if not p.name.startswith(".")]


# --------------------------------------------------------------------------- 5. DNS rebinding

def _answer(port: int, host: str, path: str = "/", websocket: bool = False) -> str:
    """The status line the server gives a request carrying ``Host: host`` (and the same Origin)."""
    import base64
    import os
    import socket

    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", f"Origin: http://{host}"]
    if websocket:
        lines += ["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
                  f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
                  "Sec-WebSocket-Protocol: streamlit"]
    else:
        lines += ["Connection: close"]
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return s.recv(4096).decode("latin-1").split("\r\n", 1)[0]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``python -m ui.serve`` (what `make run` starts) on a free local port; no page is run, no model loaded."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parent.parent
    log = tmp_path_factory.mktemp("serve") / "server.log"
    env = dict(os.environ, TLI_RUNS_DIR=str(tmp_path_factory.mktemp("runs")))
    env.pop("TLI_ALLOWED_HOSTS", None)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ui.serve", "--server.address", "127.0.0.1", "--server.port",
                                 str(port), "--server.headless", "true", "--server.fileWatcherType", "none",
                                 "--browser.gatherUsageStats", "false"], cwd=root, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not come up: {log.read_text()[-2000:]}") from None
                time.sleep(0.5)
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("websocket", [True, False], ids=["websocket", "http"])
def test_the_server_answers_only_to_the_hosts_it_was_started_for(served, websocket):
    path = "/_stcore/stream" if websocket else "/"
    accepted = "101" if websocket else "200"
    for host in (f"127.0.0.1:{served}", f"localhost:{served}"):
        assert accepted in _answer(served, host, path, websocket), host
    for host in (f"evil.example:{served}", "evil.example", f"127.0.0.1.evil.example:{served}"):
        answer = _answer(served, host, path, websocket)
        assert accepted not in answer and ("403" in answer or "400" in answer), (host, answer)


def test_listening_on_every_address_accepts_the_machines_own_names_and_those_named(monkeypatch):
    import socket

    from ui.serve import allowed_hosts

    monkeypatch.setenv("TLI_ALLOWED_HOSTS", "studio.example.org, *.lab.example")
    hosts = allowed_hosts("0.0.0.0")
    assert {"localhost", "127.0.0.1", socket.gethostname(), "studio.example.org", "*.lab.example"} <= set(hosts)
    assert "*" not in hosts and "evil.example" not in hosts
    monkeypatch.delenv("TLI_ALLOWED_HOSTS")
    assert set(allowed_hosts("127.0.0.1")) == {"localhost", "127.0.0.1", "::1"}


# --------------------------------------------------------------------------- 7. the smaller ones

def test_a_csv_field_over_128_kib_is_one_clear_error(tmp_path, capsys):
    from tli_core.pairs import read_pairs

    data = b"swahili,english\nmaji,water\n\"" + b"a" * (200 * 1024) + b"\",x\n"
    with pytest.raises(TLIError, match="line 3.*longer than") as err:
        read_pairs(data, source="huge.csv")
    assert len(str(err.value).splitlines()) == 1
    (tmp_path / "huge.csv").write_bytes(data)
    assert main(["scan", "--pairs", str(tmp_path / "huge.csv"), "--model", "demo"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


@pytest.mark.parametrize("data, source", [
    (b'swahili,english\nma\x00ji,water\n', "nul.csv"),
    (b'swahili,english\n"ma\nji",water\n', "newline.csv"),
    (b'swahili,english\nmaji,"wa\r\nter"\n', "crlf.csv"),
    (b'[{"swahili": "maji", "english": "wa\\u0000ter"}]', "nul.json"),
    (b'{"swahili": "ma\\nji", "english": "water"}\n', "newline.jsonl"),
])
def test_nul_bytes_and_newlines_inside_words_are_refused(data, source):
    from tli_core.pairs import read_pairs

    with pytest.raises(TLIError, match="row 1.*control character") as err:
        read_pairs(data, source=source)
    assert len(str(err.value).splitlines()) == 1


def test_surrounding_whitespace_and_newlines_are_still_trimmed():
    from tli_core.pairs import read_pairs

    df, _ = read_pairs(b'swahili,english\n" maji\n",water \n', source="ok.csv")
    assert df[["swahili", "english"]].values.tolist() == [["maji", "water"]]


@pytest.mark.parametrize("extra, message", [
    (["--seed", "-1"], "seed must be a whole number from 0 to 4294967295"),
    (["--seed", str(2**32)], "seed must be a whole number from 0 to 4294967295"),
    (["--max-memory", "garbage"], "max_memory"),
    (["--max-memory", "0:lots"], "max_memory"),
    (["--max-memory", "gpu0:20GiB"], "max_memory"),
])
def test_bad_seeds_and_memory_limits_are_refused_before_a_run_exists(tiny_model_dir, tmp_path, capsys, monkeypatch,
                                                                     extra, message):
    import tli_core.worker as worker_module
    from tests.conftest import tiny_pair_files

    monkeypatch.setattr(worker_module, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    t, c = tiny_pair_files(tmp_path)
    runs = tmp_path / "runs"
    code = main(["train", "--model", str(tiny_model_dir), "--quant", "fp32", "--device", "cpu", "--pairs", str(t),
                 "--control", str(c), "--runs-dir", str(runs), "--quiet"] + extra)
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not runs.exists() or not [p for p in runs.iterdir() if not p.name.startswith(".")]


def test_a_good_memory_limit_is_accepted():
    from tli_core.models import ModelSpec

    assert ModelSpec(max_memory="0:20GiB, 1:20GB,cpu:64GiB").max_memory


def _compare(tmp_path, capsys, text: str, *extra) -> tuple[int, str, str]:
    path = tmp_path / "table.csv"
    path.write_text(text)
    code = main(["compare", "--csv", str(path), "--before", "before", "--after", "after", *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_compare_refuses_a_table_that_names_a_column_twice(tmp_path, capsys):
    code, out, err = _compare(tmp_path, capsys, "before,after,before\n0.1,0.2,0.9\n0.2,0.4,0.8\n0.3,0.3,0.7\n")
    assert code == 2 and "'before' more than once" in err and len(err.strip().splitlines()) == 1, err


def test_compare_refuses_values_too_large_to_average_instead_of_printing_inf(tmp_path, capsys):
    code, out, err = _compare(tmp_path, capsys, "before,after\n1e308,1e308\n1e308,1.5e308\n1.2e308,1e308\n")
    assert code == 2 and "too large" in err and "inf" not in out, (out, err)


@pytest.mark.parametrize("after, says", [("before + 0.1", "every pair changed by +0.1"),
                                         ("before", "no pair changed")])
def test_compare_says_no_variation_when_every_pair_changes_alike(tmp_path, capsys, after, says):
    import numpy as np

    from tli_core.stats import paired_stats

    before = np.array([0.11, 0.23, 0.37, 0.41, 0.52, 0.68])
    rows = "".join(f"{float(b)!r},{float(eval(after, {'before': b}))!r}\n" for b in before)
    code, out, err = _compare(tmp_path, capsys, "before,after\n" + rows)
    assert code == 0 and "no variation" in out and says in out, out
    s = paired_stats(before, eval(after, {"before": before}))
    assert np.isnan(s.t) and np.isnan(s.p)  # not t = 7.2e15, p = 0 from rounding, nor a bare NaN


def test_two_launches_at_once_start_one_run_and_refuse_the_other(tiny_model_dir, tmp_path, monkeypatch):
    """Two servers pressing Launch at the same instant: the busy check and the creation are one step."""
    import subprocess
    import threading
    import time

    import tli_core.jobs.runner as runner
    from tests.conftest import tiny_pair_files
    from tli_core.config import TLIConfig
    from tli_core.models import ModelSpec
    from tli_core.runs import list_runs

    workers = []

    def fake_worker(command, target, log_path, pid_file="worker.pid", extra_args=None):
        """A live process standing in for the worker (it never takes the JobLock)."""
        from tli_core.files import write_text
        from tli_core.jobs.process import process_tag

        proc = subprocess.Popen(["sleep", "60"])
        workers.append(proc)
        write_text(Path(target) / pid_file, process_tag(proc.pid))
        return proc.pid

    slow_create = runner.create_run

    def create_run(*args, **kwargs):  # the window between the check and the worker's pid, made wide
        time.sleep(0.5)
        return slow_create(*args, **kwargs)

    monkeypatch.setattr(runner, "spawn_worker", fake_worker)
    monkeypatch.setattr(runner, "create_run", create_run)
    t, c = tiny_pair_files(tmp_path)
    config = TLIConfig(model=ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"),
                       trained_pairs=str(t), control_pairs=str(c), batch_size=4, epochs=1, warmup_steps=1)
    runs, barrier, outcomes = tmp_path / "runs", threading.Barrier(2), []

    def launch():
        barrier.wait()
        try:
            outcomes.append(runner.start_run(config, runs)[0].id)
        except TLIError as exc:
            outcomes.append(str(exc))

    try:
        threads = [threading.Thread(target=launch) for _ in range(2)]
        [th.start() for th in threads]
        [th.join(60) for th in threads]
        assert len(list_runs(runs)) == 1, outcomes
        assert any("wait for it" in o for o in outcomes), outcomes
    finally:
        for proc in workers:
            proc.kill()
            proc.wait()


def test_a_checkpoint_left_half_written_by_kill_9_is_removed_when_the_next_job_starts(tiny_model_dir, tmp_path,
                                                                                      monkeypatch):
    """The killed run is never saved to again; its ``.epoch_N.tmpPID`` went only with a later save in that run."""
    import subprocess
    import sys

    import tli_core.worker as worker_module
    from tests.conftest import tiny_pair_files
    from tli_core.config import TLIConfig
    from tli_core.models import ModelSpec
    from tli_core.runs import create_run

    t, c = tiny_pair_files(tmp_path)
    config = TLIConfig(model=ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"),
                       trained_pairs=str(t), control_pairs=str(c), batch_size=4)
    runs = tmp_path / "runs"
    killed = create_run(config, runs, name="killed")
    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    dead = [killed.path / "checkpoints" / f".epoch_2.tmp{gone}", killed.path / f".adapter.tmp{gone}"]
    alive = killed.path / "checkpoints" / f".epoch_3.tmp{os.getppid()}"  # a live process that is not us
    for d in (*dead, alive):
        d.mkdir(parents=True)
        (d / "adapter_config.json").write_text("{")
    monkeypatch.setattr(worker_module, "_execute", lambda run, *a: run.update_status(state="done"))
    worker_module.execute(create_run(config, runs, name="next"))
    assert not any(d.exists() for d in dead) and alive.exists()


def test_an_unknown_benchmark_task_is_refused_before_the_run_records_anything(good_adapter, tiny_model_dir,
                                                                              tmp_path, capsys, monkeypatch):
    import tli_core.downstream as downstream_module
    from tests.conftest import tiny_pair_files
    from tli_core.config import TLIConfig
    from tli_core.models import ModelSpec
    from tli_core.runs import create_run

    # lm-eval's own index of its ~15,000 task names takes half a minute to build here; a small stand-in
    monkeypatch.setattr(downstream_module, "_lm_eval_tasks", lambda: frozenset({"arc_easy"}), raising=False)
    t, c = tiny_pair_files(tmp_path)
    config = TLIConfig(model=ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"),
                       trained_pairs=str(t), control_pairs=str(c), lora_r=2, target_modules=["q_proj", "v_proj"])
    run = create_run(config, tmp_path / "runs", name="tuned", adapter_from=good_adapter,
                     status={"state": "imported", "phase": "imported"})
    before = sorted(p.name for p in run.path.rglob("*"))
    code = main(["downstream", "--run", run.id, "--runs-dir", str(tmp_path / "runs"),
                 "--tasks", "tli_word_choice_sw_en,no_such_task", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "no_such_task" in err and len(err.strip().splitlines()) == 1, err
    assert run.raw_status()["state"] == "imported" and not run.side_job("downstream")
    assert sorted(p.name for p in run.path.rglob("*")) == before


def test_deleting_a_run_that_is_a_symbolic_link_is_refused_and_says_why(tiny_model_dir, tmp_path, capsys):
    from tests.conftest import tiny_pair_files
    from tli_core.config import TLIConfig
    from tli_core.models import ModelSpec
    from tli_core.runs import create_run, list_runs

    t, c = tiny_pair_files(tmp_path)
    config = TLIConfig(model=ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"),
                       trained_pairs=str(t), control_pairs=str(c))
    elsewhere = create_run(config, tmp_path / "elsewhere", name="real", status={"state": "done"})
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "linked").symlink_to(elsewhere.path, target_is_directory=True)
    assert [r.id for r in list_runs(runs)] == ["linked"]
    code = main(["runs", "--runs-dir", str(runs), "--delete", "linked"])
    out, err = capsys.readouterr()
    assert code == 2 and "symbolic link" in err and "deleted" not in out, (out, err)
    assert (runs / "linked").is_symlink() and (elsewhere.path / "config.json").is_file()
    assert [p.name for p in runs.iterdir()] == ["linked"]  # no hidden '.linked.deleting' either


def test_session_files_are_bounded_the_oldest_go_first_and_the_current_one_stays(tmp_path, monkeypatch):
    import time

    import tli_core.workspace as workspace

    monkeypatch.setenv("TLI_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(workspace, "MAX_SESSIONS", 5, raising=False)
    sids = [workspace.new_session_id() for _ in range(8)]
    for i, sid in enumerate(sids):  # eight visits, each a new browser session
        workspace.write_session(sid, {"visit": i})
        os.utime(tmp_path / "home" / "sessions" / f"{sid}.json", (time.time() - 100 + i,) * 2)
    workspace.write_session(sids[0], {"visit": 0, "again": True})  # the oldest comes back: it is kept, as newest
    kept = sorted(p.stem for p in (tmp_path / "home" / "sessions").glob("*.json"))
    assert len(kept) <= 5 and sids[0] in kept and sids[-1] in kept
    assert workspace.read_session(sids[0])["again"] is True
    assert not set(sids[1:4]) & set(kept)  # the least recently used went


def test_a_run_named_like_a_url_is_shown_as_text_not_as_a_link(app_env, tiny_model_dir, tmp_path):
    """Markdown (GFM) turns a bare www.… or http://… into a link; a run id may be 'www.evil.example'."""
    from streamlit.testing.v1 import AppTest

    from tests.conftest import tiny_pair_files
    from tests.test_app import ROOT, texts
    from tli_core.config import TLIConfig
    from tli_core.models import ModelSpec
    from tli_core.runs import create_run

    t, c = tiny_pair_files(tmp_path)
    config = TLIConfig(model=ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"),
                       trained_pairs=str(t), control_pairs=str(c))
    create_run(config, app_env, name="www.evil.example")  # queued: Compare says it has no results yet
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.query_params["run"] = "www.evil.example"
    at.run()
    at.switch_page("pages/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    shown = texts(at)
    assert "www\\.evil\\.example" in shown and "www.evil.example" not in shown, shown


def test_a_run_name_with_a_link_is_not_a_link_in_the_runs_figure():
    import pandas as pd

    from tli_core.figures import runs_curve_figure

    curves = pd.DataFrame([{"run": "r1", "set": "trained", "phase": phase, "layer": k, "true_mean": 0.5,
                            "gap": 0.1} for phase in ("before", "after") for k in (0, 1)])
    fig = runs_curve_figure(curves, "trained", {"r1": '<a href="http://evil.example">click</a>'})
    names = [trace.name or "" for trace in fig.data]
    assert names and not any("<a" in n for n in names) and any("&lt;a href" in n for n in names), names


def test_a_started_worker_keeps_the_directory_busy_only_until_it_holds_the_lock(tmp_path):
    from tli_core.jobs.process import JobLock, mark_starting
    from tli_core.jobs.runner import busy_message

    mark_starting(tmp_path, os.getpid(), "run r1")  # this process stands in for the worker just started
    assert "a job is starting (run r1" in busy_message(tmp_path)
    lock = JobLock(tmp_path)
    assert lock.acquire("run r1, pid 1")
    assert "already running (run r1, pid 1)" in busy_message(tmp_path)
    lock.release()
    assert busy_message(tmp_path) is None  # finished: not "starting" again while the process lives on
