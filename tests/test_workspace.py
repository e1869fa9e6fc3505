"""The workspace persists and a result travels (issue 13): kept sets and forms, links, runs side by side, reports."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from tests.test_app import ROOT, TIMEOUT, open_page, ready_model, texts
from tli_core import workspace
from tli_core.config import TLIConfig
from tli_core.figures import distribution_figure, embedding_map_figure, fd_bins, sweep_heatmap
from tli_core.models import ModelSpec
from tli_core.report import build_bundle, build_report, static_images_available
from tli_core.runs import create_run, curves_side_by_side, diff_configs, results_side_by_side, runs_table
from tli_core.worker import execute


def session(sid: str, page: str | None = None) -> AppTest:
    """A browser tab opened on ?s=<sid>: a reload, or the first visit after a server restart."""
    ready_model()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.query_params["s"] = sid
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture
def uploaded(app_env):
    """A set as an upload on the Word pairs page leaves it: kept by content hash, chosen by one session."""
    authors = pd.DataFrame([("kioo", "mirror"), ("kioo", "glass"), ("maji", "water"), ("mbwa", "dog")] * 1,
                           columns=["swahili", "english"])
    meta = workspace.save_pairs(authors, "word_pairs.json", "trained", ["word_pairs.json: 4 rows read"])
    control = workspace.default_pairsets()["control"]
    sid = workspace.new_session_id()
    workspace.write_session(sid, {"sets": {"trained": meta.hash, "control": control.hash}})
    return sid, meta


def test_a_kept_set_comes_back_after_a_reload_or_restart_and_is_named_everywhere(uploaded):
    sid, meta = uploaded
    at = session(sid, "pages/train.py")  # a fresh AppTest: nothing in memory, only the workspace on disk
    header = "\n".join(m.value for m in at.markdown).replace("\\", "")
    assert f"4 from word_pairs.json · {meta.hash[:8]}" in header  # name and short hash, not only counts
    at = session(sid)
    sidebar = "\n".join(str(c.value) for c in at.sidebar.caption).replace("\\", "")
    assert "word_pairs.json" in sidebar
    at = session(sid, "pages/pairs.py")
    assert "word_pairs.json" in texts(at).replace("\\", "")


def test_a_fresh_session_starts_from_the_sets_chosen_last_on_this_server(uploaded):
    _, meta = uploaded
    workspace.remember_sets(meta.hash, workspace.default_pairsets()["control"].hash)
    at = open_page("pages/train.py")
    assert "word_pairs.json" in "\n".join(m.value for m in at.markdown).replace("\\", "")


def test_the_train_form_survives_a_reload_and_keeps_the_papers_defaults(app_env):
    sid = workspace.new_session_id()
    at = session(sid, "pages/train.py")
    number = {n.label: n for n in at.number_input}
    assert number["Epochs"].value == 5 and at.multiselect[0].value == [2]
    number["Epochs"].set_value(3).run()
    at = session(sid, "pages/train.py")  # reload
    assert {n.label: n.value for n in at.number_input}["Epochs"] == 3
    [b for b in at.button if b.label == "Reset to the paper's settings"][0].click().run()
    assert {n.label: n.value for n in at.number_input}["Epochs"] == 5


def test_what_is_typed_on_every_page_survives_a_reload(app_env):
    """Scan settings, the sweep grid, edited probe templates, diagnostics: a new AppTest on the same ?s= is a
    reload (or the first visit after a server restart: the state is on disk, not in the server)."""
    sid = workspace.new_session_id()
    at = session(sid, "pages/scan.py")
    select = {s.label: s for s in at.selectbox}
    select["Pooling"].set_value("last").run()
    {s.label: s for s in at.selectbox}["Mean-centering"].set_value("joint").run()
    at.number_input[0].set_value(7).run()
    at = session(sid, "pages/scan.py")
    select = {s.label: s.value for s in at.selectbox}
    assert (select["Pooling"], select["Mean-centering"], at.number_input[0].value) == ("last", "joint", 7)

    at.switch_page("pages/sweeps.py").run()
    at.text_input[0].set_value("1,3").run()
    {n.label: n for n in at.number_input}["Epochs per cell"].set_value(4).run()
    [c for c in at.checkbox if c.label == "Add full fine-tuning"][0].check().run()
    at = session(sid, "pages/sweeps.py")
    assert at.text_input[0].value == "1,3" and {n.label: n.value for n in at.number_input}["Epochs per cell"] == 4
    assert [c for c in at.checkbox if c.label == "Add full fine-tuning"][0].value is True

    at.switch_page("pages/probes.py").run()
    at.text_input[0].set_value("Kiingereza cha '{word}' ni").run()
    at.radio[0].set_value("trained").run()
    assert len(at.multiselect[0].value) == 8  # the other set's words gave way to this set's first eight
    at.multiselect[0].set_value([]).run()
    assert at.multiselect[0].value == []  # emptied on purpose: it stays empty
    at = session(sid, "pages/probes.py")
    assert at.text_input[0].value == "Kiingereza cha '{word}' ni" and at.radio[0].value == "trained"
    assert at.multiselect[0].value == []

    at.switch_page("pages/diagnostics.py").run()
    at.text_input[0].set_value("3, 5").run()
    at = session(sid, "pages/diagnostics.py")
    assert at.text_input[0].value == "3, 5"


def test_a_link_opens_the_scan_with_its_settings_and_ignores_nonsense(app_env):
    ready_model()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    at.switch_page("pages/scan.py")
    for k, v in {"pooling": "mean_no_first", "centering": "language", "seed": "12", "sets": "control",
                 "precision": "bogus"}.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception
    select = {s.label: s.value for s in at.selectbox}
    assert (select["Pooling"], select["Mean-centering"], at.number_input[0].value) == ("mean_no_first", "language", 12)
    assert at.multiselect[0].value == ["control"] and select["Analysis precision"] == "float32"  # the default


def test_a_scan_suggestion_is_a_button_and_warnings_follow_the_settings(app_env):
    sid = workspace.new_session_id()
    at = session(sid, "pages/scan.py")
    [b for b in at.button if b.label.startswith("Run the scan")][0].click().run()
    assert not at.exception
    at.switch_page("pages/train.py").run()
    assert at.multiselect[0].value == [2]  # the paper's layer stays
    use = [b for b in at.button if b.label.startswith("Use layer")]
    assert use and "instead of the paper's layer 2" in use[0].label
    layer = int(use[0].label.split()[2])
    use[0].click().run()
    assert at.multiselect[0].value == [layer]
    number = {n.label: n for n in at.number_input}
    number["Epochs"].set_value(1).run()
    number = {n.label: n for n in at.number_input}
    number["Trained subset (0 = all)"].set_value(24).run()
    assert any("warm-up steps on a run of 3 steps" in w.value.replace("\\", "") for w in at.warning)
    assert any("estimated duration" in c.value or "No duration estimate" in c.value for c in at.caption)
    at = session(sid, "pages/train.py")  # a reload: the suggestion and the estimate it feeds are still there
    assert [b for b in at.button if b.label.startswith("Use layer")] == [] and at.multiselect[0].value == [layer]
    [b for b in at.button if b.label == "Reset to the paper's settings"][0].click().run()
    assert [b.label for b in at.button if b.label.startswith("Use layer")] == [use[0].label]
    assert any("estimated duration" in c.value for c in at.caption)


def drawn(widget) -> list:
    """What a browser draws for a multiselect from this run's message alone: the value sent with it, else the
    widget's default (a browser that missed the run which set the value, e.g. a run cut short, has only that)."""
    p = widget.proto
    return list(p.raw_values) if p.set_value else [p.options[i] if isinstance(i, int) else i for i in p.default]


def test_a_restored_selection_is_drawn_by_every_run(app_env):
    """After a reload the Layer scan's "Sets" came back empty on a slow server while the selects came back: the
    restored value reached the browser in the first run's message only. Every run now draws it."""
    sid = workspace.new_session_id()
    at = session(sid, "pages/scan.py")
    at.multiselect(key="scan-sets").set_value(["control"]).run()
    {s.label: s for s in at.selectbox}["Mean-centering"].set_value("joint").run()
    at = session(sid, "pages/scan.py")  # a reload
    for _ in range(2):  # the run that restores the values, and any run after it
        sets, centering = at.multiselect(key="scan-sets"), at.selectbox(key="scan-centering")
        assert sets.value == ["control"] and drawn(sets) == ["control"]
        assert centering.value == "joint" and (centering.proto.set_value or centering.proto.default == 1)
        at.run()


@pytest.fixture
def two_runs(app_env, tiny_model_dir, pair_files):
    trained, control = pair_files
    config = TLIConfig(model=ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"),
                       trained_pairs=str(trained), control_pairs=str(control), batch_size=4, epochs=1,
                       warmup_steps=1)
    done = create_run(config, app_env, name="finished-one")
    assert execute(done)["state"] == "done"
    done.set_meta(name="the good one", notes="r=16, one epoch")
    stopped = create_run(config, app_env, name="newer-stopped")  # newer, but not finished
    stopped.request_stop()
    assert execute(stopped)["state"] == "stopped"
    return done, stopped


def test_compare_opens_the_newest_finished_run_and_a_link_opens_any(two_runs):
    done, stopped = two_runs
    at = open_page("pages/compare.py")
    assert at.selectbox[0].value == done.id  # not the newer, stopped one
    assert at.query_params["run"] == done.id and at.query_params["protocol"] == "studio"  # the view is in its link
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.query_params["run"] = done.id
    at.query_params["protocol"] = "paper-code"
    at.query_params["layer"] = "1"
    at.run()
    at.switch_page("pages/compare.py").run()
    assert not at.exception
    assert at.radio[1].value == "paper-code" and at.select_slider[0].value == 1
    assert any("What changed at layer 1" in s.value for s in at.subheader)


def test_estimates_come_from_earlier_runs_of_the_model(two_runs):
    from tli_core.estimate import estimate_run

    done, _ = two_runs
    est = estimate_run(done.config(), 18, 6, done.path.parent)
    assert est is not None and "measured by 1 finished run" in est.basis
    assert set(est.phases) >= {"embedding before", "training", "embedding after"} and est.total > 0


def test_the_estimate_covers_every_phase_a_run_goes_through(two_runs):
    from tli_core.estimate import estimate_run

    done, _ = two_runs
    times = done.raw_status()["phase_times"]
    est = estimate_run(done.config(), 18, 6, done.path.parent)
    # each phase the finished run went through (but checking, the worker's first instant) is in the estimate
    assert set(times) - {"checking"} <= set(est.phases) | {"loading model"}
    words = 2 * (18 + 6)
    measured = 2 * sum(v["rows"] for v in done.raw_status()["pairs"].values())
    assert est.phases["evaluating"] == pytest.approx(times["evaluating"] / measured * words)
    assert est.phases["saving the trained weights"] == pytest.approx(times["saving the trained weights"])
    # before any finished run: the model's load time here stands in for the worker's own load
    fresh = estimate_run(done.config(), 18, 6, done.path.parent / "empty", scan_seconds_per_word=0.01,
                         load_seconds=4.5)
    assert fresh.phases["loading model"] == 4.5 and "rough" in fresh.basis


def test_progress_reads_phase_counts_times_and_what_is_left():
    from tli_core.estimate import Estimate, progress_text, remaining

    est = Estimate(phases={"loading model": 5.0, "embedding before": 10.0, "training": 40.0,
                           "saving the trained weights": 1.0, "embedding after": 10.0, "evaluating": 2.0})
    status = {"phase": "training", "phase_times": {"loading model": 6.0, "embedding before": 9.0},
              "progress": {"phase": "training", "done": 10, "total": 40, "phase_seconds": 12.0}}
    # the current phase at its own pace (1.2 s/step x 30 steps), then the estimate of what follows: saving as
    # estimated, the compute phases at this run's pace so far (embedding before took 9 s of an estimated 10, and a
    # quarter of training projects 48 s against 40 s)
    assert remaining(status, est) == pytest.approx(36.0 + 1.0 + (9 + 12) / (10 + 10) * (10.0 + 2.0))
    fraction, text = progress_text(status, est)
    assert fraction == 0.25
    assert text == "training: 10/40 steps · 12 s in this phase, 27 s in all · about 50 s left"
    # a phase without counts falls back to its estimate; nothing left is never negative (and a phase three times
    # over its estimate makes what follows three times longer too)
    status = {"phase_times": {}, "progress": {"phase": "embedding after", "phase_seconds": 30.0}}
    assert remaining(status, est) == pytest.approx(0.0 + 3 * 2.0)
    assert progress_text({}, None) == (0.0, "starting … · 0 s in this phase, 0 s in all")


def test_runs_lead_with_what_matters_and_compare_results(two_runs):
    done, stopped = two_runs
    table = runs_table(done.path.parent)
    # what a reviewer reads first: the verdict and the specific effect, retrieval, then the raw change labelled raw
    assert list(table.columns[:9]) == ["run", "name", "control verdict", "control specific Δ",
                                       "control specific p (Holm)", "control hit@1 CSLS Δ", "control raw Δ",
                                       "control shuffled Δ", "control raw p"]
    assert {"state", "pairs", "target layers", "method", "rank", "protocol", "placebo", "seed"} <= set(table.columns)
    row = table.set_index("run").loc[done.id]
    assert row["name"] == "the good one" and row["notes"] == "r=16, one epoch" and "trained.csv" in row["pairs"]
    other = create_run(TLIConfig.from_dict(dict(done.config_dict(), lora_r=4)), done.path.parent, name="r4")
    assert execute(other)["state"] == "done"
    results = results_side_by_side([done, other])
    assert len(results) == 4 and set(results["run"]) == {done.id, other.id}
    assert results.set_index(["run", "set"]).loc[(done.id, "control"), "raw Δ"] == pytest.approx(
        done.summary()["groups"]["control"]["change"])
    assert results.set_index(["run", "set"]).loc[(done.id, "control"), "specific Δ"] == pytest.approx(
        done.summary()["groups"]["control"]["specific"]["change"])
    curves = curves_side_by_side([done, other])
    assert set(curves["run"]) == {done.id, other.id} and set(curves["phase"]) == {"before", "after"}
    diff = diff_configs(done, other, stopped)
    assert "lora_r" in set(diff["setting"]) and list(diff.columns) == ["setting", done.id, other.id, stopped.id]


def test_the_report_is_one_self_contained_file_and_the_bundle_has_everything(two_runs):
    done, _ = two_runs
    html = build_report(done)
    assert html.startswith("<!DOCTYPE html>") and "Plotly" in html and "cdn" not in html.lower().split("<body>")[1]
    for text in ("Results under each evaluation protocol", "paper-code", "Word by word", "the good one",
                 "trained.csv", "p (paired t)", "TLI Studio"):
        assert text in html, text
    pct = done.summary()["groups"]["control"]["pct_change"]  # in percent units: shown with its sign and a % sign
    assert f"<td>{pct:+.2f} %</td>" in html
    bundle = zipfile.ZipFile(io.BytesIO(build_bundle(done)))
    names = set(bundle.namelist())
    root = done.id
    assert {f"{root}/report.html", f"{root}/config.json", f"{root}/tables/studio/pairs.csv",
            f"{root}/tables/paper-code/curve.csv", f"{root}/adapter/adapter_model.safetensors"} <= names
    if static_images_available():
        assert f"{root}/figures/studio__trained-layer-curve.svg" in names
        assert bundle.read(f"{root}/figures/training-loss.png")[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"<svg" in bundle.read(f"{root}/figures/studio__control-distribution.svg")[:400]
    else:
        assert f"{root}/figures/README.txt" in names


def test_report_cli(two_runs, tmp_path, capsys):
    from tli_core.cli import main

    done, stopped = two_runs
    out = tmp_path / "r.html"
    assert main(["report", "--run", done.id, "--runs-dir", str(done.path.parent), "--out", str(out)]) == 0
    assert out.read_text().count("plotly-graph-div") >= 4
    assert main(["report", "--run", stopped.id, "--runs-dir", str(done.path.parent)]) == 2
    assert "no results to report yet" in capsys.readouterr().err


# --------------------------------------------------------------------------- figures that read

def test_histogram_bins_follow_freedman_diaconis_and_means_sit_in_the_legend():
    rng = np.random.default_rng(0)
    values = rng.normal(0.98, 0.01, 600)
    bins = fd_bins(values)
    iqr = np.subtract(*np.percentile(values, [75, 25]))
    assert bins["size"] == pytest.approx(max(2 * iqr / len(values) ** (1 / 3), (values.max() - values.min()) / 80))
    df = pd.DataFrame({"set": "trained", "before": values, "after": values + 0.001})
    fig = distribution_figure(df, "trained")
    assert [t.name for t in fig.data if t.type == "scatter"] == [f"mean before {values.mean():.4f}",
                                                                 f"mean after {values.mean() + 0.001:.4f}"]
    assert not fig.layout.annotations  # no labels to collide


def test_an_outlier_does_not_squash_the_histogram_and_is_counted():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.98, 0.01, 600), [0.2, 0.5]])  # two far outliers
    df = pd.DataFrame({"set": "trained", "before": values, "after": values + 0.001})
    fig = distribution_figure(df, "trained")
    lo, hi = fig.layout.xaxis.range
    bulk = np.percentile(values, [0.5, 99.5])
    assert lo > 0.9 and lo <= bulk[0] and hi >= bulk[1] and hi - lo < 0.15  # the bulk fills the axis
    hist = [t for t in fig.data if t.type == "histogram"]
    assert hist[0].xbins.size < (bulk[1] - bulk[0]) / 10  # bins fitted to the bulk, not to 0.2 … 1
    (beyond,) = [t for t in fig.data if t.name and t.name.startswith("outside the axis")]
    assert "before 2 below" in beyond.name and "after 2 below" in beyond.name  # marked and counted, not lost


def test_the_gap_axis_ticks_at_round_values():
    from tli_core.figures import curve_figure

    layers = np.arange(31)
    curve = pd.DataFrame({"set": "trained", "layer": layers, "layer_name": layers.astype(str), "n": 50,
                          "true_mean": 0.9, "true_std": 0.05, "shuffled_mean": 0.89, "shuffled_std": 0.05,
                          "gap": np.r_[0.0214, -0.00723, np.linspace(0.001, 0.004, 29)], "p1_nn": 0.02,
                          "p5_nn": 0.05, "p1_csls": 0.03, "p5_csls": 0.06, "chance_p1": 0.01, "chance_p5": 0.05})
    full = curve_figure(curve, "trained").full_figure_for_development(warn=False)
    gap = next(ax for name, ax in full.layout.to_plotly_json().items() if name.startswith("yaxis")
               and ax.get("title", {}).get("text") == "gap")
    step = float(gap["dtick"])
    mantissa = step / 10 ** np.floor(np.log10(step))
    assert round(mantissa, 6) in (1, 2, 2.5, 5) and round(float(gap["tick0"]) / step, 6) % 1 == 0


def test_the_embedding_map_shares_one_scale_and_the_sweep_colour_bar_stays_readable():
    pts = pd.DataFrame({"phase": ["before"] * 4 + ["after"] * 4, "language": ["swahili", "english"] * 4,
                        "set": "trained", "pair": ["a", "a", "b", "b"] * 2, "word": list("wxyz") * 2,
                        "partner": list("xwzy") * 2, "x": [0, 1, 2, 3, 10, 11, 12, 13.0],
                        "y": [0, 1, 0, 1, 5, 6, 5, 6.0]})
    fig = embedding_map_figure(pts)
    assert tuple(fig.layout.xaxis.range) == tuple(fig.layout.xaxis2.range)
    assert fig.layout.xaxis.range[0] < 0 and fig.layout.xaxis.range[1] > 13
    results = pd.DataFrame({"cell": [0], "target layers": ["2"], "placement": ["all"], "rank": [16],
                            "state": ["done"], "control specific Δ": [0.01], "control specific p corrected": [0.2]})
    heat = sweep_heatmap(results)
    assert heat.layout.height >= 340


def test_a_sweep_whose_cells_all_fail_says_so(tiny_model_dir, pair_files, tmp_path):
    from tli_core.grid import run_sweep
    from tli_core.sweeps import SweepSpec, create_sweep

    trained, control = pair_files
    base = TLIConfig(model=ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"),
                     trained_pairs=str(trained), control_pairs=str(control), batch_size=4, epochs=1)
    sweep = create_sweep(SweepSpec(base=base, target_layers=[[9], [12]], ranks=[4]), tmp_path / "runs")
    status = run_sweep(sweep)
    assert status["state"] == "invalid" and "no unit could run" in status["message"]
    assert "target layer 9" in status["message"]


def test_compare_import_picks_a_column_named_group():
    from tli_core.stats import guess_group_column

    assert guess_group_column(["word", "before", "after", "group"]) == "group"
    assert guess_group_column(["Set", "before", "after"]) == "Set"
    assert guess_group_column(["word", "before", "after"]) is None


def test_session_ids_in_links_are_checked():
    assert workspace.valid_session_id(workspace.new_session_id())
    for bad in ("../x", "", None, "ZZZZZZZZZZZZ", "a" * 13):
        assert not workspace.valid_session_id(bad)
    assert workspace.read_session("../../etc") == {}


def test_a_link_to_the_runs_page_brings_back_the_runs_compared(two_runs):
    done, stopped = two_runs
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    at.switch_page("pages/runs.py")
    at.query_params["runs"] = f"{done.id},{stopped.id},no-such-run"  # a run deleted since: the link still opens
    at.run()
    assert not at.exception
    assert at.multiselect(key="runs-runs").value == [done.id, stopped.id]
    assert any(s.value == "2 runs side by side" for s in at.subheader)
    assert at.query_params["runs"] == f"{done.id},{stopped.id}"


def test_word_pairs_page_reads_line_by_line_and_a_kept_set_takes_one_click(app_env):
    trained = pd.DataFrame([("kioo", "mirror"), ("maji", "water"), ("mbwa", "dog")], columns=["swahili", "english"])
    control = pd.DataFrame([("kioo", "glass"), ("pombe", "water")], columns=["swahili", "english"])
    t = workspace.save_pairs(trained, "mine.csv", "trained")
    c = workspace.save_pairs(control, "theirs.csv", "control")
    sid = workspace.new_session_id()
    workspace.write_session(sid, {"sets": {"trained": t.hash, "control": c.hash}})
    at = session(sid, "pages/pairs.py")
    assert [tab.label for tab in at.tabs] == ["Trained", "Control", "Split one file"]  # no count: no jump
    (warning,) = at.warning
    assert len(warning.value.split("  \n")) == 2  # a shared headword and a shared English word: two lines
    other = workspace.save_pairs(trained.head(2), "other.csv", "trained")
    at = session(sid, "pages/pairs.py")
    at.selectbox(key="kept-trained").set_value(other.hash).run()  # one pick, no second button
    assert not at.exception
    assert workspace.read_session(sid)["sets"]["trained"] == other.hash
    assert at.selectbox(key="kept-trained").value is None and "other.csv" in texts(at).replace("\\", "")
