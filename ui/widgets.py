"""Display helpers every page uses: figures, CSV downloads, errors, search, the sidebar, job panels."""

from __future__ import annotations

import html
from urllib.parse import urlencode

import pandas as pd
import streamlit as st

from tli_core.errors import OverlapError, TLIError
from tli_core.estimate import job_line
from tli_core.figures import PLOT_CONFIG
from tli_core.files import csv_bytes
from tli_core.jobs.runner import busy_message, start_evaluation
from tli_core.layers import CONVENTION
from tli_core.protocols import DEFAULT_PROTOCOLS, PROTOCOLS
from tli_core.report import build_bundle, build_report
from tli_core.runs import Run, active_runs, newest

from .models import current_loading, current_model, runs_dir, slow_poll
from .state import pairs_state, persist, persisted
from .text import md  # noqa: F401  (pages import md from here)


def plot(fig, key: str | None = None, source: str | None = None) -> None:
    """A Plotly figure with its PNG download button (camera icon) in the mode bar.

    ``source`` (e.g. "run X · studio protocol · layer 29") becomes the figure's subtitle, so a downloaded PNG
    still says what was measured and how."""
    if source:
        title = fig.layout.title.text or ""
        fig.update_layout(title={"text": title, "subtitle": {"text": html.escape(source)}},
                          # a line more than the figure's own top margin (Plotly's default: 100 px), so the
                          # source never runs into a subplot's title
                          margin={"t": (fig.layout.margin.t if fig.layout.margin.t is not None else 100) + 28})
    config = dict(PLOT_CONFIG)
    if key:
        config["toImageButtonOptions"] = dict(PLOT_CONFIG["toImageButtonOptions"], filename=f"tli-{key}")
    st.plotly_chart(fig, key=key, config=config)


def download_csv(df: pd.DataFrame, filename: str, label: str = "Download CSV", key: str | None = None) -> None:
    st.download_button(label, csv_bytes(df), file_name=filename, mime="text/csv",
                       key=key or f"dl-{filename}", icon=":material/download:")


def show_error(exc: Exception, overlap_control: str | None = None) -> None:
    """A user's error as one message (naming the page's own control where there is one); a bug in full."""
    if isinstance(exc, OverlapError) and overlap_control:
        exc = exc.with_control(f"the “{overlap_control}” box on this page")
    if isinstance(exc, TLIError):
        st.error(md(exc), icon="⚠️")
    else:
        st.exception(exc)


def searchable(df: pd.DataFrame, key: str, columns=("swahili", "english"), label="Search words") -> pd.DataFrame:
    query = st.text_input(label, key=key, placeholder="type part of a Swahili or English word")
    if not query:
        return df
    if not any(c in df for c in columns):  # an imported table: search every text column
        columns = [c for c in df.columns if df[c].dtype == object or pd.api.types.is_string_dtype(df[c])]
    mask = pd.Series(False, index=df.index)
    for col in columns:
        if col in df:
            mask = mask | df[col].astype(str).str.contains(query, case=False, regex=False)
    return df[mask]


def sidebar() -> None:
    with st.sidebar:
        st.markdown("### Loaded model")
        lm = current_model()
        job = current_loading() if lm is None else None
        if job is not None and job.error is None:
            _sidebar_loading()
        elif lm is None:
            st.caption("none — load one on the Model page" if job is None else
                       "loading failed — the Model page says why")
        else:
            f = lm.facts
            st.markdown(f"**{md(f.name)}**")
            st.caption(f"{f.architecture} · {f.num_layers} blocks (layers 0–{f.num_layers}) · "
                       f"hidden {f.hidden_size}\n\n{f.quantization} · {f.device} · {f.memory_bytes / 2**20:,.0f} MiB")
        pairs = pairs_state()
        if pairs:
            st.markdown("### Word pairs")
            st.caption("  \n".join(f"{role} {len(pairs[0][role])}: {md(pairs[1][role].label)}"
                                   for role in ("trained", "control")))
        try:
            active = active_runs(runs_dir())
        except OSError:
            active = []
        if active:  # polled on its own: a full rerun of the page is not what keeps it true
            st.fragment(training_line, run_every=POLL_SECONDS)(active[0].id)
            hide_script_stop()  # the polls show Streamlit's Stop on every page while a job runs
        st.caption(f"Layers: {CONVENTION}.")


POLL_SECONDS = 1.0


def training_line(run_id: str) -> None:
    """The active run's state, phase and step, read from its status file at every call (never a kept copy)."""
    try:
        status = Run(runs_dir() / run_id).status()
    except (TLIError, OSError):
        return
    if status.get("state") in ("queued", "running"):
        st.markdown("### Training")
        st.caption(f"{md(run_id)}: {md(job_line(status))}")


def hide_script_stop() -> None:
    """Hide Streamlit's own "Stop" (the toolbar's, shown while a page reruns) on pages that follow a job: it stops
    only this page's drawing, never the job, and sits beside the job's Stop. The "Running" sign stays."""
    st.html("<style>[data-testid='stStatusWidget'] button {display: none !important;}</style>")


@st.fragment(run_every=2.0)
def _sidebar_loading() -> None:
    """While the model loads in the background: its progress; the page runs again when it is there."""
    job = current_loading()
    if job is None or job.finished.is_set():
        st.rerun(scope="app")
    st.caption(f"loading {md(job.spec.model)} … {md(job.phase)} ({job.fraction:.0%})")


def evaluation_panel(run, key: str) -> None:
    """State of a run's re-evaluation, or a button that starts one in the background.

    One job at a time per runs directory (the evaluator takes the job lock); a started
    evaluation shows as running from the first instant, so a second click cannot start another.
    """
    ev = run.evaluation()
    if ev.get("state") == "running":
        st.info(f"Evaluating the saved weights: {ev.get('phase') or 'starting'} (started "
                f"{ev.get('started') or 'now'}). This page updates when it is done.", icon=":material/hourglass_top:")
        _poll_evaluation(run)
        return
    if ev.get("state") == "failed":
        st.error(f"The last evaluation failed: {md(ev.get('message'))}")
    busy = busy_message(run.path.parent)
    if busy:
        st.caption(f"Evaluation waits: {md(busy)}.")
    label = "Evaluate again" if ev.get("state") == "failed" else "Evaluate this run"
    try:
        default = run.config().protocols
    except TLIError:
        default = list(DEFAULT_PROTOCOLS)
    chosen = st.multiselect("Protocols", list(PROTOCOLS), default=default, key=f"{key}-protocols",
                            format_func=lambda p: f"{p} — {PROTOCOLS[p].describe()}",
                            help="paper-code-fp4 reloads the base in FP4, as the authors' evaluation script did")
    if st.button(label, type="primary", key=key, disabled=bool(busy) or not chosen, icon=":material/analytics:"):
        try:
            start_evaluation(run, chosen)
            st.toast("Evaluation started in the background.")
            st.rerun()
        except TLIError as exc:
            show_error(exc)


@st.fragment(run_every=2.0)
def _poll_evaluation(run) -> None:
    slow_poll()
    if not run.is_evaluating():
        st.rerun(scope="app")


def run_label(run) -> str:
    name = run.meta().get("name")
    return f"{run.id}" + (f" “{name}”" if name else "") + f" — {run.status().get('state')}"


def run_picker(runs: list, label: str = "Run", none_label: str | None = None, key: str = "run-picker"):
    """A run chosen by the link (?run=...), else the one this browser opened last, else the newest finished one;
    the choice goes back into the link and into the session's memory."""
    by_id = {r.id: r for r in runs}
    wanted = st.query_params.get("run")
    if wanted not in by_id:
        wanted = persisted("last_run")
    if wanted not in by_id:
        pick = newest(runs, ("done",)) or newest(runs)
        wanted = pick.id if pick else None
    options = ([None] if none_label else []) + list(by_id)
    chosen = st.selectbox(label, options, index=options.index(wanted) if wanted in options else 0, key=key,
                          format_func=lambda rid: none_label if rid is None else run_label(by_id[rid]))
    if chosen is None:
        st.query_params.pop("run", None)
        return None
    persist("last_run", chosen)
    if st.query_params.get("run") != chosen:
        st.query_params["run"] = chosen
    return by_id[chosen]


def export_buttons(run, report_col, bundle_col) -> None:
    """'Export report (HTML)' and 'Export bundle (ZIP)' of ``run``, in the two given columns."""
    report_col.download_button("Export report (HTML)", lambda: build_report(run).encode("utf-8"),
                               file_name=f"{run.id}-report.html", mime="text/html", icon=":material/description:",
                               help="one self-contained file: interactive figures, statistics, settings; opens "
                                    "offline")
    bundle_col.download_button("Export bundle (ZIP)", lambda: build_bundle(run), file_name=f"{run.id}-bundle.zip",
                               mime="application/zip", icon=":material/folder_zip:",
                               help="the report, CSV tables, figures as SVG and PNG, the trained weights")


def reflect(**params) -> None:
    """Put a view's state into its link (values None are taken out)."""
    for name, value in params.items():
        if value is None:
            st.query_params.pop(name, None)
        elif st.query_params.get(name) != str(value):
            st.query_params[name] = str(value)


def copy_link(*names: str) -> None:
    """The link to this view (only the view's own parameters: a collaborator gets the view, not the session)."""
    base = (st.context.url or "").split("?")[0]
    query = urlencode({n: st.query_params[n] for n in names if n in st.query_params})
    with st.popover("Copy link", icon=":material/link:"):
        st.caption("A link to exactly this view (run, protocol, layer, set). Anyone who can reach this server opens "
                   "the same view.")
        st.code(f"{base}?{query}" if query else base, language=None)
