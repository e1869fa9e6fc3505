"""Integration on the embedded demo model (SmolLM2-135M, NF4 on CPU), through the real CLI.

`make test` converts the demo model first (`make demo`); these tests reuse that cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.demo


def cli(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "tli_core", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def demo():
    from tli_core.models import ModelSpec, load_model

    return load_model(ModelSpec(model="demo", quantization="nf4", device="cpu"))


def test_demo_in_nf4_holds_4bit_layers(demo):
    import bitsandbytes as bnb

    f = demo.facts
    assert f.source == "demo" and f.architecture == "LlamaForCausalLM"
    assert (f.num_layers, f.hidden_size, f.num_hidden_states) == (30, 576, 31)
    q = demo.model.model.layers[0].self_attn.q_proj
    assert isinstance(q, bnb.nn.Linear4bit) and q.weight.quant_state.quant_type == "nf4"
    assert f.quantized_linear_layers == 30 * 7 == 210
    assert f.memory_bytes < 150 * 2**20  # vs ~513 MiB in fp32


def test_demo_conversion_is_reused():
    from tli_core.demo import demo_dir, demo_ready, prepare_demo

    assert demo_ready()
    before = (demo_dir() / "tli_demo.json").stat().st_mtime
    assert prepare_demo() == demo_dir()
    assert (demo_dir() / "tli_demo.json").stat().st_mtime == before


def test_scan_cli_prints_all_31_hidden_states(tmp_path):
    from tli_core.pairs import load_default_pairs

    trained, control = load_default_pairs()
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps(trained.head(40)[["swahili", "english"]].to_dict("records"), ensure_ascii=False))
    ctrl = tmp_path / "control.json"
    ctrl.write_text(json.dumps(control.head(20)[["swahili", "english"]].to_dict("records"), ensure_ascii=False))
    out = cli("scan", "--model", "demo", "--pairs", str(pairs), "--control", str(ctrl), "--out", str(tmp_path / "o"),
              "--quiet")
    assert out.returncode == 0, out.stderr
    assert "hidden states 0..30" in out.stdout and "trained set (40 pairs)" in out.stdout
    assert "control set (20 pairs)" in out.stdout
    for header in ("true cos", "shuffled", "gap", "P@1 NN", "P@1 CSLS"):
        assert header in out.stdout
    curve = pd.read_csv(tmp_path / "o" / "curve.csv")
    assert sorted(curve.loc[curve["set"] == "trained", "layer"]) == list(range(31))
    assert sorted(curve.loc[curve["set"] == "control", "layer"]) == list(range(31))
    # the documented artifact: middle layers put shuffled pairs as close as true ones
    mid = curve[(curve["set"] == "trained") & curve["layer"].between(13, 27)]
    assert (mid["shuffled_mean"] > 0.99).all() and (mid["gap"].abs() < 0.02).all()


def test_train_cli_one_epoch_on_a_subset(tmp_path):
    # float32 compute: on CPUs without bf16 matrix units a bf16 training step is 10-25x slower
    out = cli("train", "--model", "demo", "--compute-dtype", "float32", "--epochs", "1", "--trained-subset", "64",
              "--control-subset", "32", "--warmup-steps", "2", "--runs-dir", str(tmp_path / "runs"), "--quiet")
    assert out.returncode == 0, out.stderr
    assert "p (paired t)" in out.stdout and "trained" in out.stdout and "control" in out.stdout
    (run,) = [d for d in (tmp_path / "runs").iterdir() if not d.name.startswith(".")]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval_layer"] == 29 and summary["train"]["gradient_blocks"] == [1, 2]
    assert summary["groups"]["trained"]["n"] == 64 and summary["groups"]["control"]["n"] == 32
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "done" and status["step"] == 8
