"""Runs: every run with what matters first; name and notes; results of several runs side by side; reports."""

import streamlit as st

from tli_core.figures import runs_curve_figure
from tli_core.jobs.runner import import_adapter
from tli_core.layers import parse_layers
from tli_core.runs import curves_side_by_side, delete_run, diff_configs, list_runs, results_side_by_side, runs_table
from ui import state
from ui.downstream import downstream_panel, downstream_results
from ui.models import current_model, get_pairs, runs_dir
from ui.widgets import (
    copy_link,
    download_csv,
    evaluation_panel,
    export_buttons,
    hide_script_stop,
    md,
    plot,
    reflect,
    show_error,
)

st.title("Runs")
hide_script_stop()  # a job page: the job's Stop is the only Stop
st.caption(f"Run directories live in {md(runs_dir())}; each holds its config, status, metrics, log, trained weights, "
           f"before/after tables and benchmarks. Select one run to act on it, two or more to compare their results.")

with st.expander("Import a published adapter (any PEFT LoRA directory)"):
    st.caption("For example the authors' `results/tli_lora_adapters/final` (r=16, α=32, q_proj/v_proj, all layers, "
               "base Lugha-Llama-8B-wura). It is checked against the loaded model — every tensor's shape, before "
               "anything is written — and becomes a run you can evaluate under any protocol, on this session's "
               "word pairs.")
    c1, c2 = st.columns([3, 1])
    source = c1.text_input("Adapter directory", placeholder="/path/to/tli_lora_adapters/final")
    layers_text = c2.text_input("Trained on layer(s)", "2")
    lm = current_model()
    if st.button("Import", icon=":material/upload:", disabled=lm is None or not source.strip()):
        try:
            pairs = get_pairs()
            run, info = import_adapter(source.strip(), lm.spec, runs_dir(), pairs["trained"], pairs["control"],
                                       target_layers=parse_layers(layers_text))
            st.success(f"Imported as run {md(run.id)} (r={info['adapter_config'].get('r')}, "
                       f"α={info['adapter_config'].get('lora_alpha')}); select it below to evaluate it.")
        except Exception as exc:
            show_error(exc)

table = runs_table(runs_dir())
if table.empty:
    st.info("No runs yet.")
    st.page_link("pages/train.py", label="Launch one on the Train page", icon=":material/model_training:")
    st.stop()

percent = st.column_config.NumberColumn(format="%+.2f%%")
change = st.column_config.NumberColumn(format="%+.4f")
sim = st.column_config.NumberColumn(format="%.4f")
pval = st.column_config.NumberColumn(format="%.3g")
event = st.dataframe(
    table, hide_index=True, width="stretch", on_select="rerun", selection_mode="multi-row", key="runs-table",
    column_config={g + col: change for g in ("trained", "control")
                   for col in (" specific Δ", " hit@1 CSLS Δ", " raw Δ", " shuffled Δ")} | {
        "trained % change": percent, "control % change": percent, "trained raw p": pval, "control raw p": pval,
        "trained specific p (Holm)": pval, "control specific p (Holm)": pval,
        "control verdict": st.column_config.TextColumn(width="large", help="specific to translations, significant "
                                                        "after correction; a single run is never confirmed: "
                                                        "seeds and a placebo are (Train, Sweeps)"),
        "trained before": sim,
                   "trained after": sim, "control before": sim, "control after": sim,
                   "run": st.column_config.TextColumn(width="medium", pinned=True),
                   "pairs": st.column_config.TextColumn("pairs (trained / control)", width="small",
                                                        help="file names and short content hashes; hover a cell "
                                                             "for the whole text")})
download_csv(table, "runs.csv", "Download this table (CSV)", key="dl-runs")
selected = [table.iloc[i]["run"] for i in event.selection.rows] if event and event.selection else []
runs = {r.id: r for r in list_runs(runs_dir())}
# set the picker only when it must change (a value set by the script each run can overwrite a pick in flight)
kept = state.form_value("runs", "runs")
if kept is None:  # first view: the runs named by the link (those that still exist)
    linked = [r for r in (st.query_params.get("runs") or "").split(",") if r in runs]
    if linked:
        state.set_form_value("runs", "runs", linked)
elif any(r not in runs for r in kept):  # a run deleted since
    state.set_form_value("runs", "runs", [r for r in kept if r in runs])
picked = st.multiselect("…or pick runs by id", list(runs), **state.field("runs", "runs"),
                        help="the same as ticking their rows in the table; a link to this page brings them back")
selected = [runs[s] for s in dict.fromkeys(selected + picked) if s in runs]
reflect(runs=",".join(r.id for r in selected) or None)
if selected:
    copy_link("runs")

if len(selected) >= 2:
    st.subheader(f"{len(selected)} runs side by side")
    labels = {r.id: r.meta().get("name") or r.id for r in selected}
    results = results_side_by_side(selected)
    waiting = results.loc[results["set"] == "—", "run"].tolist()
    if waiting:
        st.caption(f"Not evaluated yet (listed, without results): {md(', '.join(waiting))}. Select one alone to "
                   f"evaluate it.")
    if len(waiting) == len(selected):
        st.info("None of these runs has results yet.")
    else:
        st.caption("Each run's headline protocol; the protocol, layer, pooling and precision are in the table.")
        st.dataframe(results, hide_index=True, width="stretch", column_config={
            "change": change, "% change": percent, "p (paired t)": pval, "mean before": sim, "mean after": sim,
            "gap before": change, "gap after": change})
        download_csv(results, "runs_results.csv", "Download the results (CSV)", key="dl-runs-results")
        curves = curves_side_by_side(selected)
        if not curves.empty:
            cols = st.columns(2)
            for col, group in zip(cols, ("trained", "control"), strict=True):
                with col:
                    plot(runs_curve_figure(curves, group, labels), key=f"runs-curves-{group}")
    only = st.toggle("Only settings that differ", value=True)
    diff = diff_configs(*selected, only_different=only)
    st.dataframe(diff, hide_index=True, width="stretch")
    download_csv(diff, "runs_settings.csv", "Download the settings (CSV)", key="dl-runs-settings")
elif len(selected) == 1:
    run = selected[0]
    status = run.status()
    meta = run.meta()
    st.subheader(run.id + (f" — {md(meta['name'])}" if meta.get("name") else ""))
    message = f" · {md(status['message'])}" if status.get("message") else ""
    st.markdown(f"**{md(status.get('state') or 'unknown')}** · phase {md(status.get('phase') or '—')} · step "
                f"{status.get('step') or 0}/{status.get('total_steps') or '?'}{message}")
    for problem in run.problems():  # this run's damaged files, each with its reason
        if problem not in str(status.get("message")):
            st.error(md(f"unreadable: {problem}"), icon="⚠️")
    with st.form(f"meta-{run.id}", enter_to_submit=False, border=False):
        c1, c2 = st.columns([1, 2])
        new_name = c1.text_input("Name", meta.get("name", ""), max_chars=100)
        new_notes = c2.text_area("Notes", meta.get("notes", ""), max_chars=5000, height=80)
        if st.form_submit_button("Save name and notes", icon=":material/save:"):
            try:
                run.set_meta(name=new_name.strip(), notes=new_notes.strip())
                st.toast("Saved.")
                st.rerun()
            except Exception as exc:
                show_error(exc)
    c1, c2, c3, c4 = st.columns(4)
    if run.has_weights():
        kind = "adapter" if run.has_adapter() else "fine-tuned blocks"
        c1.download_button(f"Download {kind} (zip)", run.weights_zip, mime="application/zip",
                           file_name=f"{run.id}-{run.final_weights().name}.zip", icon=":material/download:")
    if run.is_active():
        if c2.button("Stop", icon=":material/stop_circle:"):
            try:
                run.request_stop()
                st.toast("Stop requested.")
            except Exception as exc:
                show_error(exc)
    if run.summary() is not None:
        if c3.button("Open in Compare", icon=":material/compare_arrows:"):
            state.set_watched_run(run.id)
            st.switch_page("pages/compare.py", query_params={"run": run.id})
    if not run.is_active():
        confirm = c4.checkbox("Confirm delete", key=f"confirm-{run.id}")
        if c4.button("Delete", icon=":material/delete:", disabled=not confirm):
            try:
                delete_run(run)
                st.toast(f"Deleted {md(run.id)}")
                st.rerun()
            except Exception as exc:
                show_error(exc)
    if run.summary() is not None:
        export_buttons(run, *st.columns(2))
    if not run.is_active() and run.has_weights():
        if run.summary() is None:
            st.caption("This run's saved weights have no before/after statistics yet.")
            evaluation_panel(run, key=f"evaluate-{run.id}")
        else:
            with st.expander(f"Evaluate under other protocols (evaluated: {', '.join(run.protocols())})"):
                evaluation_panel(run, key=f"evaluate-{run.id}")
        running = run.downstream().get("state") == "running"
        with st.expander("Downstream benchmarks (lm-evaluation-harness)", expanded=running):
            downstream_results(run, f"runs-{run.id}")
            downstream_panel(run, key=f"downstream-runs-{run.id}")
    imported = status.get("import")
    if imported:
        with st.expander("Imported adapter", expanded=run.summary() is None):
            st.caption(f"From {md(imported['source'])} on {imported['imported']}")
            st.json(imported["adapter_config"])
    with st.expander("Config"):
        st.json(run.config_dict())
    with st.expander("Log"):
        st.code(run.log_tail(60) or "(empty)", language=None)
