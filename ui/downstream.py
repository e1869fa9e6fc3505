"""Downstream benchmarks of a run (lm-evaluation-harness): the launcher with its live progress, and the results."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from tli_core.downstream import HUB_TASKS, LOCAL_TASKS, downstream_table
from tli_core.errors import TLIError
from tli_core.figures import downstream_figure
from tli_core.files import read_csv
from tli_core.jobs.runner import busy_message, start_downstream

from .models import slow_poll
from .widgets import download_csv, md, plot, show_error

TASK_LABELS = {**LOCAL_TASKS, **HUB_TASKS}


def downstream_panel(run, key: str) -> None:
    """The run's benchmark job: its live progress while it runs, else the task picker and a start button."""
    job = run.downstream()
    if job.get("state") == "running":
        _progress(run)
        return
    if job.get("state") == "failed":
        st.error(f"The last benchmark run failed: {md(job.get('message'))}")
    st.caption("lm-evaluation-harness scores the base model and the model with this run's trained weights on the "
               "same items, with the same settings; every item's correctness is kept, and the change is tested on "
               "the pairs of items (McNemar). **The XNLI, XCOPA, Belebele and XStoryCloze tasks download their "
               "data from the Hugging Face hub** the first time, as lm-eval always does; without a network they "
               "stop at once with one line. The two local word-choice tasks run anywhere.")
    chosen = st.multiselect("Tasks", list(TASK_LABELS), default=list(LOCAL_TASKS), key=f"{key}-tasks",
                            format_func=lambda t: f"{t} — {TASK_LABELS[t]}")
    c1, c2, c3 = st.columns([2, 1, 1])
    other = c1.text_input("Other lm-eval tasks (comma-separated)", key=f"{key}-other",
                          placeholder="e.g. xnli_fr, belebele_fra_Latn",
                          help="any task name lm-eval knows; checked when the job starts")
    shots = c2.number_input("Few-shot examples", 0, 25, 0, key=f"{key}-shots", help="0 = zero-shot")
    limit = c3.number_input("Items per task (0 = all)", 0, 100_000, 0, step=50, key=f"{key}-limit",
                            help="the first N items of each task: quick looks; leave 0 for numbers to report")
    tasks = list(dict.fromkeys(chosen + [t.strip() for t in other.split(",") if t.strip()]))
    busy = busy_message(run.path.parent)
    if busy:
        st.caption(f"Benchmarks wait: {md(busy)}.")
    if st.button("Run the benchmarks", type="primary", key=f"{key}-start", icon=":material/fact_check:",
                 disabled=bool(busy) or not tasks):
        try:
            start_downstream(run, tasks, int(shots), int(limit) or None)
            st.toast("Benchmarks started in the background.")
            st.rerun()
        except TLIError as exc:
            show_error(exc)


@st.fragment(run_every=2.0)
def _progress(run) -> None:
    slow_poll()
    job = run.downstream()
    if job.get("state") != "running":
        st.rerun(scope="app")
    done, total = job.get("done") or 0, job.get("total")
    text = f"Benchmarks: {job.get('phase') or 'starting'}" + (f" — {job['detail']}" if job.get("detail") else "")
    if total:
        st.progress(min(1.0, done / total), text=f"{md(text)}: {int(done)} of {int(total)}")
    else:
        st.info(md(text) + " …", icon=":material/hourglass_top:")
    tasks = ", ".join(job.get("tasks") or [])  # an empty list read "tasks ."
    st.caption(f"Started {job.get('started') or 'now'}" + (f"; tasks {md(tasks)}" if tasks else "")
               + ". This page updates when it is done.")


def downstream_results(run, key: str) -> bool:
    """The run's latest benchmark results (figure, table, items); False when it has none. A damaged results file
    is said in its place (True: there is something to see, and rerunning the benchmarks replaces it)."""
    try:
        summary = run.downstream_summary()
    except TLIError as exc:
        show_error(exc)
        return True
    if summary is None:
        return False
    shots, limit = summary.get("num_fewshot", 0), summary.get("limit")
    st.caption(f"{shots}-shot" + (f", the first {limit} items of each task" if limit else ", all items")
               + f" · weights {md(summary.get('weights') or '?')} · {md(summary.get('model') or '?')} · finished "
               f"{summary.get('finished') or '?'}." + (f" {md(summary['test'])}." if summary.get("test") else ""))
    plot(downstream_figure(summary), key=f"downstream-{key}")
    table = downstream_table(summary)
    pct = st.column_config.NumberColumn(format="%.3f")
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        "chance": pct, "acc base": pct, "acc tuned": pct, "change": st.column_config.NumberColumn(format="%+.3f"),
        "change CI low": st.column_config.NumberColumn(format="%+.3f"),
        "change CI high": st.column_config.NumberColumn(format="%+.3f"),
        "p (McNemar)": st.column_config.NumberColumn(format="%.3g"),
        "minimum detectable change": st.column_config.NumberColumn(format="±%.3f")})
    for _, r in table.iterrows():
        st.caption(f"**{md(r['task'])}**: {md(r['verdict'])} — with {r['n']} items this test detects a change of "
                   f"±{r['minimum detectable change']:.1%} with 80 % power; a smaller one can hide in the CI.")
    c1, c2 = st.columns(2)
    with c1:
        download_csv(table, f"downstream_{run.id}.csv", "Download the results (CSV)", key=f"dl-downstream-{key}")
    items_path = run.path / "downstream" / "items.csv"
    if items_path.is_file():
        try:
            items = read_csv(items_path)
        except Exception:  # noqa: BLE001 -- a damaged file: the summary above still stands
            items = pd.DataFrame()
        if not items.empty:
            with c2:
                download_csv(items, f"downstream_items_{run.id}.csv", "Download every item (CSV)",
                             key=f"dl-downstream-items-{key}")
    return True
