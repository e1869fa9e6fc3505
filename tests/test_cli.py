"""The command line as a user meets it: output, files, and one clear line for every mistake."""

import json

import pandas as pd
import pytest

from tli_core.cli import main
from tli_core.errors import TLIError
from tli_core.layers import parse_layers


def run_cli(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_scan_prints_every_layer_and_writes_tables(tiny_model_dir, tmp_path, capsys):
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{"swahili": s, "english": e} for s, e in
                                 [("maji", "water"), ("paka", "cat"), ("mbwa", "dog"), ("jua", "sun")]]))
    control = tmp_path / "control.jsonl"
    control.write_text('{"swahili": "mti", "english": "tree"}\n{"swahili": "moja", "english": "one"}\n')
    out_dir = tmp_path / "scan"
    code, out, err = run_cli(["scan", "--model", str(tiny_model_dir), "--quant", "fp32", "--pairs", str(pairs),
                              "--control", str(control), "--out", str(out_dir), "--quiet"], capsys)
    assert code == 0, err
    assert "hidden states 0..4" in out and "trained set (4 pairs)" in out and "control set (2 pairs)" in out
    for name in ("embeddings", "block 1", "block 2", "block 3", "block 4 + final norm"):
        assert name in out
    assert "suggested target layer" in out
    curve = pd.read_csv(out_dir / "curve.csv")
    assert len(curve) == 10 and {"true_mean", "shuffled_mean", "gap", "p1_nn", "p1_csls", "chance_p1"} <= set(curve)
    table = pd.read_csv(out_dir / "pairs.csv")
    assert len(table) == 6 and "layer_4" in table
    meta = json.loads((out_dir / "scan.json").read_text())
    assert meta["facts"]["num_layers"] == 4 and meta["pooling"] == "mean"


def test_scan_layers_pooling_and_centering(tiny_model_dir, pair_files, capsys):
    trained, _ = pair_files
    code, out, _ = run_cli(["scan", "--model", str(tiny_model_dir), "--quant", "fp32", "--pairs", str(trained),
                            "--layers", "1-2", "--pooling", "mean_words", "--center", "--quiet"], capsys)
    assert code == 0 and "pooling=mean_words, centering=joint" in out
    assert "block 1" in out and "block 3" not in out


@pytest.mark.parametrize("make, extra, message", [
    (None, [], "pair file not found"),
    (b"swahili,english\nmaji,\xffwater\n", [], "not UTF-8"),
    (b"sw,en\nmaji,water\n", [], "missing column"),
    (b"swahili,english\nmaji, \n", [], "empty English word"),
    (b"swahili,english\n", [], "no pairs"),
    (b"swahili,english\nmaji,water\npaka,cat\n", ["--model", "nobody/nothing-here"], "cannot be reached"),
    (b"swahili,english\nmaji,water\npaka,cat\n", ["--model", "/no/such/dir"], "no such model directory"),
    (b"swahili,english\nmaji,water\npaka,cat\n", ["--layers", "0-9"], "layer 5 is outside"),
    (b"swahili,english\nmaji,water\npaka,cat\n", ["--layers", "two"], "cannot read layers"),
])
def test_scan_errors_are_one_line_and_write_nothing(tiny_model_dir, tmp_path, capsys, make, extra, message):
    pairs = tmp_path / "p.csv"
    if make is not None:
        pairs.write_bytes(make)
    out_dir = tmp_path / "out"
    args = ["scan", "--model", str(tiny_model_dir), "--quant", "fp32", "--pairs", str(pairs),
            "--out", str(out_dir), "--quiet"] + extra
    code, out, err = run_cli(args, capsys)
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not out_dir.exists()


def test_scan_refuses_cuda_without_a_gpu(tiny_model_dir, pair_files, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, _, err = run_cli(["scan", "--model", str(tiny_model_dir), "--device", "cuda", "--pairs",
                            str(pair_files[0]), "--out", str(tmp_path / "o"), "--quiet"], capsys)
    assert code == 2 and "no CUDA GPU" in err and not (tmp_path / "o").exists()


def test_help_documents_every_option(capsys):
    for command in ("scan", "train", "evaluate", "compare", "runs"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "usage:" in text
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--target-layers", "--eval-layer", "--rank", "--alpha", "--lora-dropout", "--target-modules",
                 "--adapter-blocks", "--loss", "--margin", "--temperature", "--lr", "--warmup-steps", "--epochs",
                 "--batch-size", "--grad-clip", "--seed", "--early-exit", "--allow-overlap", "--quant", "--config"):
        assert flag in text


def test_parse_layers():
    assert parse_layers("0,2,5-7") == [0, 2, 5, 6, 7]
    assert parse_layers("-1") == [-1] and parse_layers(None) is None and parse_layers("all") is None
    with pytest.raises(TLIError):
        parse_layers("1-")


def train_args(model_dir, pair_files, runs_dir, *extra):
    trained, control = pair_files
    return ["train", "--model", str(model_dir), "--quant", "fp32", "--pairs", str(trained), "--control",
            str(control), "--runs-dir", str(runs_dir), "--epochs", "1", "--batch-size", "4", "--warmup-steps", "1",
            "--quiet", *extra]


def test_train_prints_statistics_for_both_sets(tiny_model_dir, pair_files, tmp_path, capsys):
    code, out, err = run_cli(train_args(tiny_model_dir, pair_files, tmp_path / "runs", "--target-layers", "1,2"),
                             capsys)
    assert code == 0, err
    assert ": done" in out and "p (paired t)" in out
    assert "trained" in out and "control" in out and "P@1 CSLS" in out
    (run_dir,) = [d for d in (tmp_path / "runs").iterdir() if not d.name.startswith(".")]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["target_layers"] == [1, 2] and config["epochs"] == 1 and config["lora_r"] == 16


def test_train_from_a_config_file_with_flag_overrides(tiny_model_dir, pair_files, tmp_path, capsys):
    import yaml

    cfg = tmp_path / "tli.yaml"
    cfg.write_text(yaml.safe_dump({"lora_r": 4, "epochs": 1, "batch_size": 4, "warmup_steps": 0,
                                   "model": {"model": str(tiny_model_dir), "quantization": "fp32"},
                                   "trained_pairs": str(pair_files[0]), "control_pairs": str(pair_files[1])}))
    code, out, err = run_cli(["train", "--config", str(cfg), "--rank", "2", "--runs-dir", str(tmp_path / "r"),
                              "--quiet"], capsys)
    assert code == 0, err
    (run_dir,) = [d for d in (tmp_path / "r").iterdir() if not d.name.startswith(".")]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["lora_r"] == 2 and config["epochs"] == 1 and config["model"]["quantization"] == "fp32"


@pytest.mark.parametrize("extra, message", [
    (["--rank", "0"], "rank must be at least 1"),
    (["--target-layers", "9"], "target layer 9 is outside"),
    (["--eval-layer", "-9"], "evaluation layer"),
    (["--batch-size", "1"], "no in-batch negatives"),
    (["--adapter-blocks", "late"], "nothing would train"),
])
def test_bad_train_settings_fail_before_any_compute(tiny_model_dir, pair_files, tmp_path, capsys, extra, message):
    runs = tmp_path / "runs"
    code, _, err = run_cli(train_args(tiny_model_dir, pair_files, runs, *extra), capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not runs.exists() or not [d for d in runs.iterdir() if not d.name.startswith(".")]


def test_overlap_and_empty_control(tiny_model_dir, tmp_path, capsys):
    trained = tmp_path / "t.csv"
    trained.write_text("swahili,english\nmaji,water\npaka,cat\nmbwa,dog\njua,sun\n")
    overlap = tmp_path / "o.csv"
    overlap.write_text("swahili,english\nmaji,water\nmti,tree\n")
    empty = tmp_path / "e.csv"
    empty.write_text("swahili,english\n")
    runs = tmp_path / "runs"
    code, _, err = run_cli(train_args(tiny_model_dir, (trained, overlap), runs), capsys)
    assert code == 2 and "overlap" in err and "--allow-overlap" in err
    code, _, err = run_cli(train_args(tiny_model_dir, (trained, empty), runs), capsys)
    assert code == 2 and "no pairs" in err
    assert not runs.exists()
    code, _, err = run_cli(train_args(tiny_model_dir, (trained, overlap), runs, "--allow-overlap"), capsys)
    assert code == 0 and "accepted overlap" in err
