"""Every dashboard page under streamlit.testing's AppTest, on the tiny model.

The app is pointed at the tiny model through the same environment variables a user would
set (TLI_DEFAULT_MODEL, TLI_DEFAULT_QUANT, TLI_RUNS_DIR).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tli_core.config import TLIConfig
from tli_core.models import ModelSpec
from tli_core.runs import Run, create_run, list_runs
from tli_core.worker import execute

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 120


def ready_model() -> None:
    """The server holds the default model (the app loads it in the background: here the load is started, and
    waited for, before a page that needs it is opened)."""
    from ui.models import _registry, start_autoload

    start_autoload()
    for job in list(_registry()["loading"].values()):
        assert job.finished.wait(TIMEOUT), "the model did not load in time"


def open_page(page: str | None = None) -> AppTest:
    """The page as a user opens it once the server holds the default model."""
    ready_model()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    if page:
        at.switch_page(page)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "info", "warning", "error", "success", "subheader", "title")
             for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def test_home_loads_the_default_model_and_shows_the_path(app_env):
    at = open_page()
    assert at.title[0].value == "TLI Studio"
    assert [m.label for m in at.metric] == ["Model", "Word pairs", "Runs"]
    assert "4 blocks" in at.metric[0].delta
    sidebar = "\n".join(str(e.value) for e in at.sidebar.markdown) + "\n".join(str(e.value) for e in at.sidebar.caption)
    assert "tiny-llama" in sidebar.replace("\\", "") and "layers 0–4" in sidebar  # the path is shown escaped
    assert "trains only blocks 1–2" in texts(at) and "shuffled-pair baseline" in texts(at)


def test_model_page_shows_facts_and_refuses_bad_input(app_env):
    at = open_page("pages/model.py")
    facts = at.table[0].value["value"]
    assert facts["decoder blocks"] == "4"
    assert facts["tokenizer adds BOS"] == "yes (<s>)"
    at.radio[0].set_value("Local directory")
    at.text_input[0].set_value("/no/such/model")
    at.button[0].click()  # the form's submit button
    at.run()
    assert any("no such model directory" in e.value for e in at.error)
    assert at.button(key=None) is not None


def test_pairs_page_shows_both_sets_and_no_leakage(app_env):
    at = open_page("pages/pairs.py")
    assert len(at.tabs) == 3
    assert "No overlap" in at.success[0].value
    assert len(at.dataframe[0].value) >= 600 and len(at.dataframe[1].value) >= 60
    at.text_input[0].set_value("maji").run()
    assert all("maji" in s or "maji" in e for s, e in zip(at.dataframe[0].value["swahili"],
                                                           at.dataframe[0].value["english"], strict=True))


def test_scan_page_runs_and_draws_the_curve(app_env):
    at = open_page("pages/scan.py")
    at.number_input[0].set_value(4242).run()  # a seed no other test scans with: nothing cached yet
    run_button = [b for b in at.button if b.label.startswith("Run the scan")]
    assert run_button
    run_button[0].click().run()
    assert not at.exception
    charts = at.get("plotly_chart")
    assert len(charts) >= 2  # the curve and the heatmap
    assert [m.label for m in at.metric][:3] == ["Raw-cosine peak (the paper's rule)",
                                                 "Largest gap over shuffled pairs", "Best retrieval (P@1, CSLS)"]
    assert "Scan took" in texts(at)
    # a second visit (here: the page's link, in a new session) does not recompute: the result comes from the cache
    at2 = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at2.run()
    at2.switch_page("pages/scan.py")
    at2.query_params["seed"] = "4242"
    at2.run()
    assert not [b for b in at2.button if b.label.startswith("Run the scan")]
    assert len(at2.get("plotly_chart")) >= 2


def test_train_page_launches_a_run_directory(app_env):
    at = open_page("pages/train.py")
    labels = {n.label for n in at.number_input}
    for label in ("LoRA rank r", "LoRA alpha", "LoRA dropout", "Learning rate", "Epochs", "Batch size",
                  "Warm-up steps", "Seed", "Triplet margin", "Gradient clipping (0 = off)"):
        assert label in labels
    values = {n.label: n.value for n in at.number_input}
    assert (values["LoRA rank r"], values["LoRA alpha"], values["Epochs"], values["Batch size"]) == (16, 32, 5, 8)
    for n in at.number_input:
        if n.label == "Epochs":
            n.set_value(1)
        if n.label == "Trained subset (0 = all)":
            n.set_value(24)
        if n.label == "Control subset (0 = all)":
            n.set_value(8)
    [b for b in at.button if b.label == "Launch training"][0].click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    runs = list_runs(app_env)
    assert len(runs) == 1 and (runs[0].path / "config.json").is_file()
    cfg = runs[0].config()
    assert cfg.epochs == 1 and cfg.trained_subset == 24 and cfg.lora_r == 16
    assert Path(cfg.trained_pairs).is_file()
    end = time.monotonic() + 120
    while runs[0].is_active() and time.monotonic() < end:
        time.sleep(0.5)
    assert runs[0].status()["state"] == "done", runs[0].log_tail()
    at = open_page("pages/train.py")  # a reload re-attaches to the run
    assert any("Done" in s.value for s in at.success)


def test_train_page_offers_full_fine_tuning(app_env):
    at = open_page("pages/train.py")
    method = [r for r in at.radio if r.label == "Method"][0]
    assert method.value == "lora"
    method.set_value("full").run()
    assert any("full fine-tuning: the weights of blocks 1..2" in w.value.replace("\\", "") for w in at.warning)
    lora = {n.label: n.disabled for n in at.number_input if n.label.startswith("LoRA")}
    assert lora == {"LoRA rank r": True, "LoRA alpha": True, "LoRA dropout": True}
    assert [s.label for s in at.selectbox if s.label == "Blocks that train"]
    at.switch_page("pages/scan.py").run()
    at.switch_page("pages/train.py").run()  # kept for the session, like every other setting
    assert [r for r in at.radio if r.label == "Method"][0].value == "full"


def test_a_second_launch_while_one_runs_is_refused(app_env, tiny_model_dir, pair_files):
    from tli_core.jobs.process import JobLock

    lock = JobLock(app_env)
    assert lock.acquire("run X, pid 1")
    try:
        at = open_page("pages/train.py")
        [b for b in at.button if b.label == "Launch training"][0].click()
        at.run()
        assert any("already running" in e.value for e in at.error)
        assert not list_runs(app_env)
    finally:
        lock.release()


@pytest.fixture
def finished_run(app_env, tiny_model_dir, pair_files) -> Run:
    trained, control = pair_files
    config = TLIConfig(model=ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"),
                       trained_pairs=str(trained), control_pairs=str(control), batch_size=4, epochs=1,
                       warmup_steps=1)
    run = create_run(config, app_env)
    assert execute(run)["state"] == "done"
    return run


def test_compare_page_shows_the_statistics_for_a_run(finished_run):
    at = open_page("pages/compare.py")
    stats = at.table[0].value
    assert list(dict.fromkeys(stats["set"])) == ["trained", "control"]
    # the specific effect and the retrieval change lead; the paper's raw change is there, labelled raw
    control = stats[stats["set"] == "control"].set_index("measure")
    assert list(control.index)[:2] == ["specific effect", "non-translation similarity"]
    assert {"hit@1, csls", "hit@5, nn", "raw cosine (paper)", "shuffled pairs (baseline)"} <= set(control.index)
    summary = finished_run.summary()
    g = summary["groups"]["control"]
    assert control.loc["raw cosine (paper)", "p"] == pytest.approx(g["p"])
    assert control.loc["specific effect", "change"] == pytest.approx(g["specific"]["change"])
    assert control.loc["hit@1, csls", "p"] == pytest.approx(g["retrieval"]["hit1_csls"]["p"])
    # one seed, no placebo: no green arrow, no star, the verdict in words
    assert not at.success or not any("★" in s.value or "confirmed" in s.value for s in at.success)
    assert any("control" in i.value for i in list(at.info) + list(at.warning))
    led = [m for m in at.metric if "Specific effect" in m.label or "hit@1" in m.label]
    assert led and all(m.proto.color != 1 for m in led)  # never GREEN without a confirmed effect
    assert len(at.get("plotly_chart")) >= 8  # 3 per set side by side, plus the layer curves
    # each figure says what it measured, so a downloaded PNG still does
    protocol, layer = summary["headline"], summary["eval_layer"]
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert spec["layout"]["title"]["subtitle"]["text"].startswith(
        f"run {finished_run.id} · {protocol} protocol · layer {layer} · pooling")
    # another evaluation layer recomputes the statistics from the stored per-layer table
    at.select_slider[0].set_value(1).run()
    assert not at.exception
    assert "layer 1 (block 1)" in texts(at)


def test_compare_warns_when_a_run_was_analysed_in_the_compute_dtype(finished_run):
    assert not any("compute dtype" in w.value for w in open_page("pages/compare.py").warning)  # float32: no warning
    path = finished_run.path / "summary.json"
    summary = json.loads(path.read_text())
    for one in [summary, *summary.get("protocols", {}).values()]:
        one["precision"] = "compute"
    path.write_text(json.dumps(summary))
    at = open_page("pages/compare.py")
    assert any("analysed in the compute dtype" in w.value for w in at.warning)


def test_compare_page_offers_to_evaluate_a_stopped_run(finished_run):
    (finished_run.path / "summary.json").unlink()
    finished_run.update_status(state="stopped")
    at = open_page("pages/compare.py")
    assert "has not been evaluated" in texts(at)
    button = next(b for b in at.button if b.label == "Evaluate this run")
    button.click().run()
    assert not at.exception
    assert "Evaluating the saved weights" in texts(at)  # no second button while it runs
    assert not any(b.label == "Evaluate this run" for b in at.button)
    end = time.monotonic() + TIMEOUT
    while finished_run.is_evaluating() and time.monotonic() < end:
        time.sleep(0.2)
    assert finished_run.evaluation()["state"] == "done", finished_run.log_tail()
    at.run()
    assert at.table and list(dict.fromkeys(at.table[0].value["set"])) == ["trained", "control"]


def test_compare_page_imports_a_csv(app_env, tmp_path):
    at = open_page("pages/compare.py")
    at.radio[0].set_value("an imported per-pair table (CSV)").run()
    assert not at.exception
    assert at.get("file_uploader")


def test_runs_page_lists_runs(finished_run):
    at = open_page("pages/runs.py")
    table = at.dataframe[0].value
    assert list(table["run"]) == [finished_run.id] and table["state"].iloc[0] == "done"
    g = finished_run.summary()["groups"]["control"]
    assert table["control raw p"].iloc[0] == pytest.approx(g["p"])
    assert table["control specific Δ"].iloc[0] == pytest.approx(g["specific"]["change"])
    assert list(table.columns[:4]) == ["run", "name", "control verdict", "control specific Δ"]


def test_benchmarks_from_the_runs_page_show_on_compare(finished_run):
    at = open_page("pages/runs.py")
    at.multiselect(key="runs-runs").set_value([finished_run.id]).run()
    panel = f"downstream-runs-{finished_run.id}"
    assert at.multiselect(key=f"{panel}-tasks").value == ["tli_word_choice_sw_en", "tli_word_choice_en_sw"]
    at.number_input(key=f"{panel}-limit").set_value(6)
    at.button(key=f"{panel}-start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    end = time.monotonic() + 180
    while finished_run.downstream().get("state") != "done" and time.monotonic() < end:
        assert finished_run.downstream().get("state") != "failed", finished_run.downstream()
        time.sleep(0.5)
    summary = finished_run.downstream_summary()
    assert summary["limit"] == 6 and set(summary["results"]) == {"tli_word_choice_sw_en", "tli_word_choice_en_sw"}
    at = open_page("pages/compare.py")
    assert "Downstream benchmarks: base vs tuned" in texts(at)
    table = [d.value for d in at.dataframe if "p (McNemar)" in d.value.columns][0]
    assert list(table["task"]) == ["tli_word_choice_sw_en", "tli_word_choice_en_sw"] and set(table["n"]) == {6}
    figures = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert any("Downstream benchmarks" in f["layout"]["title"]["text"] for f in figures)


def test_pages_without_a_model_point_to_the_model_page(app_env, monkeypatch):
    import streamlit as st

    monkeypatch.setenv("TLI_AUTOLOAD", "0")
    st.cache_resource.clear()  # no model in the server
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    for page in ("pages/scan.py", "pages/train.py"):
        at.switch_page(page).run()
        assert not at.exception
        assert any("No model is loaded yet" in i.value for i in at.info)


def test_sweeps_page_runs_a_2x2_grid(app_env):
    at = open_page("pages/sweeps.py")
    assert "No sweeps yet." in texts(at)
    at.text_input[0].set_value("1,2")
    at.multiselect[0].set_value([4])
    [c for c in at.checkbox if c.label == "Add full fine-tuning"][0].check()
    at.multiselect[1].set_value(["all"])
    [t for t in at.text_input if t.label == "Seeds"][0].set_value("7")
    [c for c in at.checkbox if c.label == "Placebo per seed"][0].uncheck()
    at.run()
    assert any("no cell can earn a ★" in c.value for c in at.caption)  # said before anything runs
    for n in at.number_input:
        if n.label == "Epochs per cell":
            n.set_value(1)
        if n.label == "Trained subset (0 = all)":
            n.set_value(24)
    [b for b in at.button if b.label == "Start the sweep"][0].click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    from tli_core.sweeps import list_sweeps

    (sweep,) = list_sweeps(app_env)
    assert len(sweep.cells()) == 4
    end = time.monotonic() + 180
    while sweep.status().get("state") in ("queued", "running") and time.monotonic() < end:
        time.sleep(0.5)
    assert sweep.status()["state"] == "done", (app_env / "sweeps" / sweep.id / "sweep.log").read_text()[-3000:]
    at = open_page("pages/sweeps.py")
    assert len(at.get("plotly_chart")) == 2
    results = [d.value for d in at.dataframe if "control specific Δ" in d.value.columns][0]
    # one seed, no placebo: no star can be earned, and the page says so in words
    assert not results["★"].any() and not any("Best cell" in s.value for s in at.success)
    assert any("No cell qualifies for a ★" in i.value and "no placebo run" in i.value for i in at.info)
    assert len(results) == 4 and set(results["state"]) == {"done"}
    assert list(results["method"]) == ["lora", "full", "lora", "full"]
    heatmap = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert heatmap["data"][0]["x"] == ["r=4", "full FT"]


def test_diagnostics_page(app_env):
    at = open_page("pages/diagnostics.py")
    [b for b in at.button if b.label == "Run diagnostics"][0].click()
    at.run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 2
    report = at.dataframe[0].value
    assert list(report["layer"]) == list(range(5)) and "first_to_other_ratio" in report


def test_embedding_map_and_probes_pages(finished_run):
    at = open_page("pages/embedding_map.py")
    assert finished_run.id in at.selectbox[0].value
    [b for b in at.button if b.label == "Draw the map"][0].click()
    at.run()
    assert not at.exception and len(at.get("plotly_chart")) == 1
    at = open_page("pages/probes.py")
    [b for b in at.button if b.label == "Run the probes"][0].click()
    at.run()
    assert not at.exception
    scores, table = at.dataframe[0].value, at.dataframe[1].value
    assert {"base", "tuned", "expected"} <= set(table.columns) and len(table) == 2 * len(at.multiselect[0].value)
    assert set(zip(scores["direction"], scores["model"], strict=True)) == {
        (d, m) for d in ("all", "sw→en", "en→sw") for m in ("base", "tuned")}
    assert scores["chrF"].between(0, 100).all() and scores["BLEU"].between(0, 100).all()
    assert [m.label for m in at.metric] == ["Base: expected word in the answer", "Tuned: expected word in the answer"]


def test_the_model_is_loaded_once_per_server(app_env, monkeypatch):
    import streamlit as st

    import ui.models as ui_models

    calls = []
    real = ui_models.load_model

    def counting(spec, progress):
        calls.append(spec)
        return real(spec, progress=progress)

    monkeypatch.setattr(ui_models, "load_model", counting)
    st.cache_resource.clear()
    at = open_page()
    for page in ("pages/model.py", "pages/scan.py", "pages/train.py", "pages/home.py"):
        at.switch_page(page).run()
        assert not at.exception
    open_page("pages/pairs.py")  # a second browser tab: a new session, the same server
    assert len(calls) == 1


def test_pages_that_read_runs_render_while_the_model_loads(finished_run, monkeypatch):
    """The model loads in a background thread: Runs, Compare, Sweeps and Word pairs render while it is pending; a
    page that needs the model shows the load's progress, then the page itself once it is there."""
    import threading

    import streamlit as st

    import ui.models as ui_models

    release, real = threading.Event(), ui_models.load_model

    def pending(spec, progress):
        progress("loading the model", 30, 100, "reading the weights")
        assert release.wait(TIMEOUT)
        return real(spec, progress=progress)

    monkeypatch.setattr(ui_models, "load_model", pending)
    st.cache_resource.clear()  # a fresh server
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
        at.run()
        assert not at.exception and at.metric[0].value == "loading …"
        assert any("loading" in c.value and "reading the weights" in c.value for c in at.sidebar.caption)
        for page, title in (("pages/runs.py", "Runs"), ("pages/compare.py", "Compare"),
                            ("pages/pairs.py", "Word pairs"), ("pages/sweeps.py", "Sweeps")):
            at.switch_page(page).run()
            assert not at.exception, (page, [e.value for e in at.exception])
            assert at.title[0].value.startswith(title)
            if page == "pages/runs.py":
                assert list(at.dataframe[0].value["run"]) == [finished_run.id]
        assert "No sweeps yet." in texts(at)  # the list of sweeps, under the load's progress line
        (line,) = at.get("progress")
        assert "Loading" in line.proto.text and "reading the weights" in line.proto.text
        at.switch_page("pages/scan.py").run()
        assert not at.exception and not at.selectbox  # the scan's settings wait for the model ...
        (line,) = at.get("progress")
        assert "Loading" in line.proto.text
    finally:
        release.set()
    for job in list(ui_models._registry()["loading"].values()):
        assert job.finished.wait(TIMEOUT)
    at.run()
    assert not at.exception and [s.label for s in at.selectbox][:1] == ["Pooling"]  # ... and are there after it


def test_unload_frees_the_model_and_loads_nothing_again(app_env):
    import streamlit as st

    import ui.models as ui_models

    try:
        at = open_page("pages/model.py")
        next(b for b in at.button if b.label == "Unload this model").click().run()
        assert not at.exception
        assert not ui_models._registry()["models"] and not ui_models._registry()["loading"]
        assert any("Unloaded" in s.value and "Load model" in s.value for s in at.success)
        at.switch_page("pages/scan.py").run()  # nothing loads it behind the user's back
        assert any("No model is loaded yet" in i.value for i in at.info)
        assert not ui_models._registry()["loading"]
    finally:
        st.cache_resource.clear()  # the next test's server starts afresh (an unload is remembered server-wide)


def test_no_icon_or_font_is_fetched_from_the_internet(finished_run, monkeypatch):
    """Offline, the tab's icon comes from this server (a ':material/…:' page icon is fetched from a font service)
    and the report loads nothing from anywhere."""
    import re

    import streamlit as st

    from tli_core.report import build_report

    icons, real = [], st.set_page_config
    monkeypatch.setattr(st, "set_page_config", lambda **kw: (icons.append(kw.get("page_icon")), real(**kw))[1])
    open_page("pages/runs.py")
    assert icons and all(Path(icon).is_file() for icon in icons)
    html = build_report(finished_run)
    assert not re.search(r"googleapis|gstatic", html)
    assert not re.search(r"<(?:link|script|img|iframe)\b[^>]*\b(?:href|src)\s*=\s*[\"']?(?:https?:)?//", html)


def test_the_report_reads_as_the_page(finished_run):
    """Corrected p-values printed as on the Compare page, missing values as empty cells (not NaN), and the
    half-width figures' titles fit: the protocol on a line of its own, room above the plot (titles were clipped)."""
    import re

    from tli_core.report import build_report, run_figures

    html = build_report(finished_run)
    for group in ("trained", "control"):
        p = finished_run.summary()["groups"][group]["specific"]["p_holm"]
        assert f"<td>{p:.3g}</td>" in html
    assert not re.search(r">\s*(NaN|None|nan)\s*<", html)  # a missing value is an empty cell
    grid = {name: fig for name, fig in run_figures(finished_run).items() if "__" in name}
    assert grid
    for fig in grid.values():
        assert fig.layout.title.subtitle.text.startswith("protocol ") and " — protocol" not in fig.layout.title.text
        assert fig.layout.margin.t >= 90


def test_no_none_and_no_empty_list_is_shown_as_text(finished_run, monkeypatch):
    """A benchmark just launched (its record: running, nothing more yet) on the Runs and Compare pages: the text
    says what is known, never "None" or "tasks ."."""
    import re

    from tli_core.runs import Run

    monkeypatch.setattr(Run, "downstream", lambda self: {"state": "running", "phase": None, "process": "1:x"})
    for page in ("pages/runs.py", "pages/compare.py"):
        at = open_page(page)
        if page == "pages/runs.py":
            at.multiselect(key="runs-runs").set_value([finished_run.id]).run()
        assert not at.exception, [e.value for e in at.exception]
        shown = texts(at) + "\n".join(str(e.value) for e in at.get("progress"))
        assert "Started now." in shown or page == "pages/compare.py"
        assert not re.search(r"\bNone\b|\bnan\b|tasks \.", shown), page


def test_the_servers_default_compute_dtype_comes_from_the_environment_and_a_bad_one_is_said(app_env, monkeypatch):
    """TLI_DEFAULT_COMPUTE=float32 for CPUs without bf16 units (10-25x faster there); a typo is one line on the
    pages, not a traceback."""
    import streamlit as st

    import ui.models as ui_models

    st.cache_resource.clear()  # a fresh server
    monkeypatch.setenv("TLI_DEFAULT_COMPUTE", "float32")
    try:
        at = open_page("pages/model.py")
        assert {s.label: s.value for s in at.selectbox}["Compute dtype (nf4)"] == "float32"
        assert [lm.spec.compute_dtype for lm in ui_models.loaded_models().values()] == ["float32"]
        st.cache_resource.clear()
        monkeypatch.setenv("TLI_DEFAULT_COMPUTE", "bf16")
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
        at.run()
        at.switch_page("pages/scan.py").run()
        assert not at.exception, [e.value for e in at.exception]
        said = [e.value.replace("\\", "") for e in at.error]  # the text as shown (Markdown-escaped source)
        assert any("TLI_DEFAULT_MODEL, _QUANT, _DEVICE, _COMPUTE" in e and "unknown compute dtype 'bf16'" in e
                   for e in said), said
        at.switch_page("pages/model.py").run()
        assert not at.exception and any("unknown compute dtype 'bf16'" in e.value.replace("\\", "") for e in at.error)
    finally:
        st.cache_resource.clear()


def test_a_figures_source_line_gets_room_above_its_subplot_titles():
    """The source line ('run X · protocol · set') is drawn under the title: the top margin grows by a line from the
    figure's own (it was cut to 80 px from Plotly's 100, and the line ran into the subplots' titles on Compare)."""
    from plotly.subplots import make_subplots

    from ui.widgets import plot

    fig = make_subplots(rows=2, cols=1, subplot_titles=("cosine", "P@1"))
    fig.update_layout(title="trained: layer curve before vs after")
    plot(fig, source="run r · paper-code protocol · set trained")
    assert fig.layout.margin.t >= 100 + 20 and fig.layout.title.subtitle.text.startswith("run r")
    tall = make_subplots(rows=1, cols=1)
    tall.update_layout(title="t", margin={"t": 110})
    plot(tall, source="s")
    assert tall.layout.margin.t >= 110 + 20
