"""Sweeps on the tiny model: units (cell x seed x arm), resume, invalid cells, the specific effect per cell over
seeds with p-values corrected across cells, the placebo contrast, the star, the heatmap."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from tests.conftest import tiny_pair_files
from tli_core.cli import main
from tli_core.config import TLIConfig
from tli_core.figures import sweep_heatmap
from tli_core.grid import run_sweep
from tli_core.models import ModelSpec
from tli_core.runs import Run, list_runs
from tli_core.sweeps import (
    SweepSpec,
    best_cell,
    create_sweep,
    downstream_grid,
    leading_cell,
    list_sweeps,
    no_star_reason,
    parse_grid_layers,
    sweep_results,
)


def tiny_base(tiny_model_dir, d, **kw) -> TLIConfig:
    trained, control = tiny_pair_files(d)
    settings = dict(batch_size=4, epochs=1, warmup_steps=1, learning_rate=5e-3, protocols=["studio"]) | kw
    return TLIConfig(model=ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"),
                     trained_pairs=str(trained), control_pairs=str(control), **settings)


@pytest.fixture(scope="module")
def finished_sweep(tiny_model_dir, tmp_path_factory, ray_runtime):
    d = tmp_path_factory.mktemp("sweep")
    spec = SweepSpec(base=tiny_base(tiny_model_dir, d), target_layers=[[1], [2]], ranks=[2, 4], placements=["all"])
    sweep = create_sweep(spec, d / "runs", pair_names={"trained": "my uploaded words.csv"})
    status = run_sweep(sweep)
    assert status["state"] == "done", status
    return sweep


@pytest.fixture(scope="module")
def replicated_sweep(tiny_model_dir, tmp_path_factory, ray_runtime):
    d = tmp_path_factory.mktemp("replicated")
    spec = SweepSpec(base=tiny_base(tiny_model_dir, d, epochs=2), target_layers=[[2]], ranks=[4], seeds=[3, 4],
                     placebo=True, tasks=["tli_word_choice_sw_en"], limit=4)
    sweep = create_sweep(spec, d / "runs")
    assert run_sweep(sweep)["state"] == "done"
    return sweep


def test_every_unit_is_an_ordinary_run(finished_sweep):
    cells = finished_sweep.cells()
    assert [(c["target_layers"], c["rank"], c["arm"]) for c in cells] == [
        ([1], 2, "tli"), ([1], 4, "tli"), ([2], 2, "tli"), ([2], 4, "tli")]
    assert all(c["state"] == "done" for c in cells)
    runs = {r.id: r for r in list_runs(finished_sweep.runs_dir)}
    for c in cells:
        cfg = runs[c["run"]].config()
        assert cfg.target_layers == c["target_layers"] and cfg.lora_r == c["rank"] and cfg.pairing == "translations"
        # each unit names the sets as the user knows them (an upload's file name), not the sweep's own copies
        st = runs[c["run"]].status()
        assert st["pairs"]["trained"]["name"] == "my uploaded words.csv" and st["pairs"]["control"]["name"] == "c.csv"
        assert st["sweep"] == {"id": finished_sweep.id, "cell": c["cell"], "unit": c["unit"], "seed": 42, "arm": "tli"}
    assert [s.id for s in list_sweeps(finished_sweep.runs_dir)] == [finished_sweep.id]
    plan = finished_sweep.status()["plan"]
    assert plan["slots"] == 2 and plan["threads"] == 1  # 2 cores: two units at a time, one thread each


def test_resume_skips_finished_units(finished_sweep):
    before = {r.id: r.raw_status()["finished"] for r in list_runs(finished_sweep.runs_dir)}
    assert run_sweep(finished_sweep)["state"] == "done"
    assert {r.id: r.raw_status()["finished"] for r in list_runs(finished_sweep.runs_dir)} == before


def _specific_p(pairs: pd.DataFrame) -> float:
    """The headword-level test of the specific effect, by hand from a run's per-pair table."""
    d = (pairs["spec_after"] - pairs["spec_before"]).to_numpy()
    per_head = pd.Series(d).groupby(pairs["swahili"].to_numpy(), sort=False).mean().to_numpy()
    return sps.ttest_1samp(per_head, 0.0).pvalue


def test_the_specific_effect_and_corrected_p_values_agree_with_an_independent_computation(finished_sweep):
    results = sweep_results(finished_sweep, "bh")
    raw_p = []
    for run_id in results["run"]:
        pairs = pd.read_csv(finished_sweep.runs_dir / run_id / "eval" / "studio" / "pairs.csv")
        ctrl = pairs[pairs["set"] == "control"]
        row = results[results["run"] == run_id].iloc[0]
        assert row["control raw Δ"] == pytest.approx((ctrl["after"] - ctrl["before"]).mean())
        assert row["control specific Δ"] == pytest.approx(
            ((ctrl["after"] - ctrl["nontrans_after"]) - (ctrl["before"] - ctrl["nontrans_before"])).mean())
        raw_p.append(_specific_p(ctrl))
    np.testing.assert_allclose(results["control specific p"], raw_p)
    np.testing.assert_allclose(results["control specific p corrected"], sps.false_discovery_control(raw_p))
    holm = sweep_results(finished_sweep, "holm")
    order = np.argsort(raw_p)
    expected, running = np.empty(4), 0.0
    for rank, i in enumerate(order):
        running = max(running, (4 - rank) * raw_p[i])
        expected[i] = min(1.0, running)
    np.testing.assert_allclose(holm["control specific p corrected"], expected)
    # one seed, no placebo: no cell can be starred, and the page says why in words
    assert not results["★"].any() and best_cell(results) is None
    assert "no second seed and no placebo run" in no_star_reason(results)
    assert leading_cell(results) == int(results.loc[results["control specific Δ"].idxmax(), "cell"])
    # the heatmap shows exactly the specific effects, with their corrected p, and outlines nothing
    fig = sweep_heatmap(results)
    z = np.asarray(fig.data[0].z)
    assert z[0, 0] == pytest.approx(results.loc[0, "control specific Δ"])
    assert z[1, 1] == pytest.approx(results.loc[3, "control specific Δ"])
    assert f"p={results.loc[3, 'control specific p corrected']:.2g}" in fig.data[0].text[1][1]
    assert "★" not in "".join(t for row in fig.data[0].text for t in row) and not fig.layout.shapes


def test_a_cell_is_judged_over_its_seeds_and_against_its_placebo(replicated_sweep):
    units = replicated_sweep.cells()
    assert [(u["seed"], u["arm"]) for u in units] == [(3, "tli"), (3, "placebo"), (4, "tli"), (4, "placebo")]
    runs = {u["run"]: Run(replicated_sweep.runs_dir / u["run"]) for u in units}
    for u in units:
        cfg = runs[u["run"]].config()
        assert cfg.seed == u["seed"] and cfg.pairing == ("deranged" if u["arm"] == "placebo" else "translations")
    placebo_pairs = pd.read_csv(replicated_sweep.runs_dir / units[1]["run"] / "pairs_placebo.csv")
    gold = set(map(tuple, Run(replicated_sweep.runs_dir / units[1]["run"]).pairs("trained")[
        ["swahili", "english"]].to_numpy()))
    assert not any((s, e) in gold for s, e in placebo_pairs[["swahili", "english"]].to_numpy())  # none translates
    row = sweep_results(replicated_sweep).iloc[0]
    assert row["seeds"] == 2 and row["placebo"] == 2

    def spec(run_id):
        return runs[run_id].summary()["groups"]["control"]["specific"]["change"]

    tli = [spec(u["run"]) for u in units if u["arm"] == "tli"]
    did = [spec(a["run"]) - spec(b["run"]) for a, b in zip(units[0::2], units[1::2], strict=True)]
    assert row["control specific Δ"] == pytest.approx(np.mean(tli))
    assert row["control specific p"] == pytest.approx(sps.ttest_1samp(tli, 0.0).pvalue)  # seeds as replicates
    assert row["control TLI − placebo"] == pytest.approx(np.mean(did))
    assert row["control TLI − placebo p"] == pytest.approx(sps.ttest_1samp(did, 0.0).pvalue)
    assert row["control p basis"] == "2 seeds as replicates"
    assert bool(row["★"]) == (row["level"] == "confirmed")
    # the benchmarks ran inside every unit, base vs tuned, with what they can detect
    bench = downstream_grid(replicated_sweep)
    assert len(bench) == 4 and set(bench["task"]) == {"tli_word_choice_sw_en"} and (bench["n"] == 4).all()
    assert {"minimum detectable change", "verdict"} <= set(bench.columns)


def test_only_a_confirmed_cell_is_best():
    results = pd.DataFrame({"cell": [0, 1, 2], "control specific Δ": [0.004, 0.10, 0.002],
                            "★": [False, False, True], "level": ["unconfirmed", "not_beyond_placebo", "confirmed"],
                            "seeds": [3, 3, 3], "placebo": [3, 3, 3]})
    assert best_cell(results) == 2  # the only star, though its effect is the smallest
    assert leading_cell(results) == 1
    assert best_cell(results.assign(**{"★": False})) is None
    # the reason reads true for one quiet cell among others, and for all (it said "1 cell(s)' ... is significant")
    mixed = results.assign(level=["not_specific", "not_beyond_placebo", "not_specific"], **{"★": False})
    assert "2 cell(s)' specific effect is not significant after correction" in no_star_reason(mixed)
    assert "no cell's specific effect is significant" in no_star_reason(mixed.assign(level="not_specific"))


def test_invalid_cells_are_reported_not_run(tiny_model_dir, tmp_path):
    base = tiny_base(tiny_model_dir, tmp_path)
    sweep = create_sweep(SweepSpec(base=base, target_layers=[[1]], ranks=[2], placements=["late"]),
                         tmp_path / "runs")
    status = run_sweep(sweep)  # nothing can run: no runtime is started at all
    assert status["state"] == "invalid" and "nothing would train" in status["message"]
    cells = sweep.cells()
    assert cells[0]["state"] == "invalid" and "nothing would train" in cells[0]["reason"]
    assert sweep_results(sweep).loc[0, "verdict"] == "could not run"


def test_sweep_cli(tiny_model_dir, tmp_path, capsys, ray_runtime):
    t, c = tiny_pair_files(tmp_path)
    code = main(["sweep", "--model", str(tiny_model_dir), "--quant", "fp32", "--pairs", str(t), "--control", str(c),
                 "--layers", "1", "--ranks", "2", "--methods", "lora,full", "--epochs", "1", "--batch-size", "4",
                 "--warmup-steps", "1", "--protocols", "studio", "--runs-dir", str(tmp_path / "runs"), "--quiet",
                 "--out", str(tmp_path / "sweep.csv")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "control specific p corrected" in out and "No cell qualifies for a ★" in out
    assert "largest specific effect: cell" in out
    table = pd.read_csv(tmp_path / "sweep.csv")
    assert len(table) == 2 and set(table["state"]) == {"done"}
    assert list(table["method"]) == ["lora", "full"]
    runs = {r.id: r for r in list_runs(tmp_path / "runs")}
    assert [runs[r].has_full_ft() for r in table["run"]] == [False, True]
    fig = sweep_heatmap(table.assign(rank=table["rank"].astype("Int64")))
    assert list(fig.data[0].x) == ["r=2", "full FT"] and np.isfinite(np.asarray(fig.data[0].z, float)).all()


def test_the_grid_as_data(tiny_model_dir, pair_files):
    base = TLIConfig(model=ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"),
                     trained_pairs=str(pair_files[0]), control_pairs=str(pair_files[1]))
    spec = SweepSpec(base=base, target_layers=[[2]], ranks=[4, 16], placements=["all"], methods=["lora", "full"],
                     seeds=[1, 2], placebo=True)
    assert [(c["method"], c["rank"]) for c in spec.cells()] == [("lora", 4), ("lora", 16), ("full", None)]
    units = spec.units()
    assert len(units) == 3 * 2 * 2 and [u["unit"] for u in units] == list(range(12))
    assert [(u["cell"], u["seed"], u["arm"]) for u in units[:4]] == [(0, 1, "tli"), (0, 1, "placebo"),
                                                                     (1, 1, "tli"), (1, 1, "placebo")]
    assert [spec.config_for(u).method for u in units[:6:2]] == ["lora", "lora", "full"]
    assert spec.config_for(units[1]).pairing == "deranged" and spec.config_for(units[6]).seed == 2
    assert SweepSpec.from_dict(json.loads(json.dumps(spec.to_dict()))).units() == units
    old = {k: v for k, v in spec.to_dict().items() if k not in ("methods", "seeds", "placebo")}  # an old sweep
    assert [c["method"] for c in SweepSpec.from_dict(old).cells()] == ["lora", "lora"]
    assert [u["seed"] for u in SweepSpec.from_dict(old).units()] == [42, 42]
    from tli_core.errors import TLIError

    for bad in (["qlora"], []):
        with pytest.raises(TLIError, match="methods"):
            create_sweep(SweepSpec(base=base, target_layers=[[2]], ranks=[4], methods=bad), "/tmp/never")
    with pytest.raises(TLIError, match="seeds listed twice"):
        SweepSpec(base=base, target_layers=[[2]], ranks=[4], seeds=[1, 1])


def test_grid_parsing():
    assert parse_grid_layers("1,2,1+2") == [[1], [2], [1, 2]]
    from tli_core.errors import TLIError

    with pytest.raises(TLIError):
        parse_grid_layers("1;2")
