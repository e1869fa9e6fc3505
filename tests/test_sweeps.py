"""A 2 x 2 sweep on the tiny model: cells, resume, invalid cells, corrected p-values, heatmap."""


import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from tli_core.cli import main
from tli_core.config import TLIConfig
from tli_core.figures import sweep_heatmap
from tli_core.models import ModelSpec
from tli_core.runs import list_runs
from tli_core.sweeps import (
    SweepSpec,
    best_cell,
    create_sweep,
    list_sweeps,
    parse_grid_layers,
    run_sweep,
    significant_gain,
    sweep_results,
)


@pytest.fixture(scope="module")
def finished_sweep(tiny_model_dir, tmp_path_factory):
    from tests.conftest import WORDS

    d = tmp_path_factory.mktemp("sweep")
    trained, control = d / "t.csv", d / "c.csv"
    pd.DataFrame(WORDS[:18], columns=["swahili", "english"]).to_csv(trained, index=False)
    pd.DataFrame(WORDS[18:], columns=["swahili", "english"]).to_csv(control, index=False)
    base = TLIConfig(model=ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"),
                     trained_pairs=str(trained), control_pairs=str(control), batch_size=4, epochs=1, warmup_steps=1,
                     learning_rate=5e-3)
    spec = SweepSpec(base=base, target_layers=[[1], [2]], ranks=[2, 4], placements=["all"])
    sweep = create_sweep(spec, d / "runs", pair_names={"trained": "my uploaded words.csv"})
    status = run_sweep(sweep)
    assert status["state"] == "done", status
    return sweep


def test_every_cell_is_an_ordinary_run(finished_sweep):
    cells = finished_sweep.cells()
    assert [(c["target_layers"], c["rank"]) for c in cells] == [([1], 2), ([1], 4), ([2], 2), ([2], 4)]
    assert all(c["state"] == "done" for c in cells)
    runs = {r.id: r for r in list_runs(finished_sweep.runs_dir)}
    for c in cells:
        cfg = runs[c["run"]].config()
        assert cfg.target_layers == c["target_layers"] and cfg.lora_r == c["rank"]
        # each cell names the sets as the user knows them (an upload's file name), not the sweep's own copies
        sets = runs[c["run"]].status()["pairs"]
        assert sets["trained"]["name"] == "my uploaded words.csv" and sets["control"]["name"] == "c.csv"
    assert [s.id for s in list_sweeps(finished_sweep.runs_dir)] == [finished_sweep.id]


def test_resume_skips_finished_cells(finished_sweep):
    before = len(list_runs(finished_sweep.runs_dir))
    assert run_sweep(finished_sweep)["state"] == "done"
    assert len(list_runs(finished_sweep.runs_dir)) == before


def test_corrected_p_values_agree_with_an_independent_computation(finished_sweep):
    results = sweep_results(finished_sweep, "bh")
    raw = []
    for run_id in results["run"]:
        pairs = pd.read_csv(finished_sweep.runs_dir / run_id / "eval" / "studio" / "pairs.csv")  # the headline
        ctrl = pairs[pairs["set"] == "control"]
        raw.append(sps.ttest_rel(ctrl["after"], ctrl["before"]).pvalue)
        assert results.loc[results["run"] == run_id, "control change"].iloc[0] == pytest.approx(
            (ctrl["after"] - ctrl["before"]).mean())
    np.testing.assert_allclose(results["control p"], raw)
    np.testing.assert_allclose(results["control p corrected"], sps.false_discovery_control(raw))
    holm = sweep_results(finished_sweep, "holm")
    order = np.argsort(raw)
    expected, running = np.empty(4), 0.0
    for rank, i in enumerate(order):
        running = max(running, (4 - rank) * raw[i])
        expected[i] = min(1.0, running)
    np.testing.assert_allclose(holm["control p corrected"], expected)
    # the heatmap shows exactly these numbers
    fig = sweep_heatmap(results, best=best_cell(results))
    z = np.asarray(fig.data[0].z)
    assert z[0, 0] == pytest.approx(results.loc[0, "control change"])
    assert z[1, 1] == pytest.approx(results.loc[3, "control change"])
    assert f"p={results.loc[3, 'control p corrected']:.2g}" in fig.data[0].text[1][1]
    assert len(fig.layout.shapes) == 1  # the best cell is outlined


def test_a_significant_decrease_is_never_the_best_cell():
    results = pd.DataFrame({"cell": [0, 1, 2], "control change": [0.004, -0.10, 0.002],
                            "significant": [False, True, False]})
    assert best_cell(results) == 0 and not significant_gain(results, 0)  # the largest change, not called a gain
    results.loc[2, "significant"] = True
    assert best_cell(results) == 2 and significant_gain(results, 2)  # a significant gain beats a larger one
    assert best_cell(results.assign(**{"control change": np.nan})) is None


def test_invalid_cells_are_reported_not_run(tiny_model_dir, pair_files, tmp_path):
    base = TLIConfig(model=ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"),
                     trained_pairs=str(pair_files[0]), control_pairs=str(pair_files[1]), batch_size=4, epochs=1,
                     warmup_steps=1)
    sweep = create_sweep(SweepSpec(base=base, target_layers=[[1]], ranks=[2], placements=["late", "up_to_target"]),
                         tmp_path / "runs")
    assert run_sweep(sweep)["state"] == "done"
    cells = sweep.cells()
    assert cells[0]["state"] == "invalid" and "nothing would train" in cells[0]["reason"]
    assert cells[1]["state"] == "done"


def test_sweep_cli(tiny_model_dir, pair_files, tmp_path, capsys):
    code = main(["sweep", "--model", str(tiny_model_dir), "--quant", "fp32", "--pairs", str(pair_files[0]),
                 "--control", str(pair_files[1]), "--layers", "1,2", "--ranks", "2", "--methods", "lora,full",
                 "--epochs", "1",
                 "--batch-size", "4", "--warmup-steps", "1", "--runs-dir", str(tmp_path / "runs"), "--quiet",
                 "--out", str(tmp_path / "sweep.csv")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "control p corrected" in out and ("best cell" in out or "largest change: cell" in out)
    table = pd.read_csv(tmp_path / "sweep.csv")
    assert len(table) == 4 and set(table["state"]) == {"done"}
    assert list(zip(table["target layers"], table["method"], strict=True)) == [
        (1, "lora"), (1, "full"), (2, "lora"), (2, "full")]
    runs = {r.id: r for r in list_runs(tmp_path / "runs")}
    assert [runs[r].config().method for r in table["run"]] == ["lora", "full", "lora", "full"]
    assert [runs[r].has_full_ft() for r in table["run"]] == [False, True, False, True]
    fig = sweep_heatmap(table.assign(rank=table["rank"].astype("Int64")), "control change")
    assert list(fig.data[0].x) == ["r=2", "full FT"] and np.isfinite(np.asarray(fig.data[0].z, float)).all()


def test_the_method_dimension(tiny_model_dir, pair_files):
    base = TLIConfig(model=ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"),
                     trained_pairs=str(pair_files[0]), control_pairs=str(pair_files[1]))
    spec = SweepSpec(base=base, target_layers=[[2]], ranks=[4, 16], placements=["all"], methods=["lora", "full"])
    assert [(c["method"], c["rank"]) for c in spec.cells()] == [("lora", 4), ("lora", 16), ("full", None)]
    assert [spec.config_for(c).method for c in spec.cells()] == ["lora", "lora", "full"]
    assert SweepSpec.from_dict(spec.to_dict()).cells() == spec.cells()
    old = {k: v for k, v in spec.to_dict().items() if k != "methods"}  # a sweep saved before methods existed
    assert [c["method"] for c in SweepSpec.from_dict(old).cells()] == ["lora", "lora"]
    from tli_core.errors import TLIError

    for bad in (["qlora"], []):
        with pytest.raises(TLIError, match="methods"):
            create_sweep(SweepSpec(base=base, target_layers=[[2]], ranks=[4], methods=bad), "/tmp/never")


def test_grid_parsing():
    assert parse_grid_layers("1,2,1+2") == [[1], [2], [1, 2]]
    from tli_core.errors import TLIError

    with pytest.raises(TLIError):
        parse_grid_layers("1;2")


def test_a_cell_reads_as_running_while_the_sweep_process_trains_it(tiny_model_dir, pair_files, tmp_path):
    """Regression: a cell's run is trained by the sweep's process, not a worker of its own; reading
    its status from another process (the dashboard) must not declare it dead."""
    import time

    from tli_core.jobs.runner import resume_sweep
    from tli_core.runs import Run

    base = TLIConfig(model=ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"),
                     trained_pairs=str(pair_files[0]), control_pairs=str(pair_files[1]), batch_size=4, epochs=400,
                     warmup_steps=1)
    sweep = create_sweep(SweepSpec(base=base, target_layers=[[1]], ranks=[2, 4]), tmp_path / "runs")
    resume_sweep(sweep)
    end = time.monotonic() + 60
    run = None
    while time.monotonic() < end:
        cell = sweep.cells()[0]
        if cell["run"]:
            run = Run(sweep.runs_dir / cell["run"])
            if len(run.metrics()) >= 3:
                break
        time.sleep(0.1)
    assert run is not None and len(run.metrics()) >= 3
    assert run.status()["state"] == "running" and run.is_active()
    assert sweep.status()["state"] == "running"
    sweep.request_stop()
    end = time.monotonic() + 60
    while sweep.status()["state"] == "running" and time.monotonic() < end:
        time.sleep(0.2)
    assert sweep.status()["state"] == "stopped" and run.status()["state"] == "stopped"
    assert sweep.cells()[1]["state"] == "pending"
