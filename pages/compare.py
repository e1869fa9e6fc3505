"""Compare: before/after for trained and control words, with paired statistics, from a run or any CSV."""

import pandas as pd
import streamlit as st

from tli_core.errors import TLIError
from tli_core.evaluation import groups_at_layer, protocols_side_by_side
from tli_core.evidence import layer_choice_note
from tli_core.figures import before_after_curve_figure, distribution_figure, ecdf_figure, scatter_figure
from tli_core.files import read_csv
from tli_core.layers import layer_name
from tli_core.protocols import PROTOCOLS
from tli_core.runs import list_runs
from tli_core.stats import STAT_LABELS, compare_table, guess_group_column, variation_notes
from tli_core.sweeps import cell_view
from ui import state
from ui.downstream import downstream_panel, downstream_results
from ui.evidence import cell_panel, show_evidence
from ui.models import runs_dir
from ui.widgets import (
    copy_link,
    download_csv,
    evaluation_panel,
    export_buttons,
    md,
    plot,
    reflect,
    run_picker,
    searchable,
    show_error,
)

st.title("Compare")
source = st.radio("Compare", ["a training run", "an imported per-pair table (CSV)"], horizontal=True)

STAT_FORMATS = {"p (paired t)": "{:.3g}", "p (Wilcoxon)": "{:.3g}", "p (Holm over layers)": "{:.3g}",
                "% change": "{:+.2f} %", "change": "{:+.4f}",
                "t": "{:.2f}", "Wilcoxon W": "{:.0f}", "n": "{:d}"}


def show_stats(table: pd.DataFrame, key: str) -> None:
    """Headline per group, then the full statistics table (static, so it reads and copies as text)."""
    cols = st.columns(len(table))
    for col, (_, row) in zip(cols, table.iterrows(), strict=True):
        col.metric(f"{md(row['group'])}: mean cosine (n = {row['n']})",
                   f"{row['mean_before']:.4f} → {row['mean_after']:.4f}",
                   f"{row['pct_change']:+.2f} %  ·  "
                   + (f"p = {row['p']:.3g}" if pd.notna(row["p"]) else "no variation"))
    for note in variation_notes(table):
        st.caption(md(note))
    shown = table.rename(columns=STAT_LABELS)
    shown["set"] = shown["set"].map(md)  # st.table renders Markdown: a group named by a URL must not become a link
    fmt = {c: STAT_FORMATS.get(c, "{:.4f}") for c in shown.columns if c != "set"}
    st.table(shown.style.format(fmt, na_rep="–").hide(axis="index"))
    download_csv(table, f"statistics_{key}.csv", "Download statistics (CSV)", key=f"dl-stats-{key}")


def side_by_side(data: pd.DataFrame, groups: list[str], before: str, after: str, key: str,
                 source: str | None = None) -> None:
    kind = st.radio("Distribution as", ["histogram", "violin"], horizontal=True, key=f"kind-{key}")
    cols = st.columns(len(groups))
    for col, g in zip(cols, groups, strict=True):
        with col:
            st.markdown(f"#### {md(g)}")
            plot(distribution_figure(data, g, kind, before, after), key=f"dist-{key}-{g}", source=source)
            plot(ecdf_figure(data, g, before, after), key=f"ecdf-{key}-{g}", source=source)
            plot(scatter_figure(data, g, before, after), key=f"scatter-{key}-{g}", source=source)


def with_hits(data: pd.DataFrame, retrieval: pd.DataFrame | None, layer: int) -> pd.DataFrame:
    """The per-pair table with each Swahili word's hit@1 by CSLS before and after (its rank of the best translation)."""
    if retrieval is None or "csls_rank_before" not in retrieval:
        return data
    r = retrieval[retrieval["layer"] == layer][["set", "swahili", "csls_rank_before", "csls_rank_after"]]
    out = data.merge(r, on=["set", "swahili"], how="left")
    out["hit@1 CSLS before"] = out["csls_rank_before"] < 1
    out["hit@1 CSLS after"] = out["csls_rank_after"] < 1
    return out


def word_table(data: pd.DataFrame, key: str) -> None:
    st.subheader("Word by word")
    found = searchable(data, key=f"search-{key}")
    found = found.sort_values("change", ascending=False) if "change" in found else found
    st.caption("Sorted by the raw change (largest gain first); click a column header to re-sort. spec_* = the "
               "pair's cosine minus its Swahili word's mean cosine to non-translations; nontrans_* = that mean.")
    st.dataframe(found, hide_index=True, width="stretch", height=420,
                 column_config={c: st.column_config.NumberColumn(format="%.4f")
                                for c in found.columns if found[c].dtype.kind == "f"})
    download_csv(found, f"pairs_{key}.csv", "Download this table (CSV)", key=f"dl-words-{key}")


if source.startswith("a training run"):
    runs = [r for r in list_runs(runs_dir())]
    if not runs:
        st.info("No runs yet.")
        st.page_link("pages/train.py", label="Launch one on the Train page", icon=":material/model_training:")
        st.stop()
    run = run_picker(runs)
    rid = run.id
    problems = run.problems()
    if problems:  # this run's own files are damaged: say which and why (every other run opens as usual)
        st.error(md(f"Run {rid} is unreadable: " + "; ".join(problems)), icon="⚠️")
        st.stop()
    summary = run.summary()
    status = run.status()
    if summary is None:
        if status.get("state") in ("queued", "running"):
            st.info(f"Run {md(rid)} is {md(status.get('phase') or status.get('state') or 'queued')}; its comparison "
                    f"appears when it finishes.")
        elif run.has_weights():
            st.warning(f"Run {md(rid)} is {md(status.get('state'))} and has not been evaluated. Evaluate its saved "
                       f"weights (before/after on every layer) in the background:")
            evaluation_panel(run, key=f"evaluate-{rid}")
        else:
            st.error(md(status.get("message") or f"Run {rid} has no results."))
        st.stop()

    cfg = run.config_dict()
    protocols = run.protocols()
    summaries = {name: (run.summary(name) or summary) for name in protocols}
    if len(protocols) > 1:
        st.subheader("The evaluation protocols side by side")
        st.caption("The same trained weights measured the ways the paper's text, the authors' script and this studio "
                   "measure it (Train page, Evaluation). " + " ".join(
                       f"**{name}**: {PROTOCOLS[name].describe() if name in PROTOCOLS else 'as recorded'}."
                       for name in protocols))
        side = protocols_side_by_side(summaries)
        st.dataframe(side, hide_index=True, width="stretch", column_config={
            c: st.column_config.NumberColumn(format="%.4f") for c in side.columns
            if side[c].dtype.kind == "f" and c not in ("% change", "p (paired t)")} | {
            "% change": st.column_config.NumberColumn(format="%+.2f%%"),
            "p (paired t)": st.column_config.NumberColumn(format="%.3g")})
        download_csv(side, f"protocols_{rid}.csv", "Download the protocols table (CSV)", key="dl-protocols")
    with st.expander("Why each protocol measures the way it does"):
        st.markdown("\n".join(f"- **{name}** ({PROTOCOLS[name].title}): " + "; ".join(PROTOCOLS[name].reasons) + "."
                               for name in protocols if name in PROTOCOLS))
    wanted = st.query_params.get("protocol")
    protocol = st.radio("Protocol shown below", protocols, horizontal=True,
                        index=protocols.index(wanted) if wanted in protocols else 0,
                        format_func=lambda p: f"{p} ({PROTOCOLS[p].title})" if p in PROTOCOLS else p)
    summary = summaries[protocol]
    try:
        layers, curve = run.require_table("pairs_layers", protocol), run.require_table("curve", protocol)
        retrieval, layer_stats = run.table("retrieval", protocol), run.table("layer_stats", protocol)
    except TLIError as exc:
        show_error(exc)
        st.stop()
    n_layers = int(summary["num_layers"])
    model_name = md(summary.get("model") or run.summary().get("model") or "?")
    st.caption(f"Model {model_name} · target layer(s) {cfg.get('target_layers')} "
               f"· rank {cfg.get('lora_r')} · {cfg.get('epochs')} epochs · loss {cfg.get('loss')} · **{protocol}**: "
               f"{summary.get('protocol_description') or 'pooling ' + str(summary.get('pooling'))} · analysis "
               f"precision {summary.get('precision') or 'the compute dtype'}")
    if summary.get("precision") == "compute":
        st.warning("This run was analysed in the compute dtype, not float32: per-pair cosines at some layers can "
                   "move by far more than the changes shown (bf16 moved single pairs by up to 0.8 on the demo "
                   "model). The layer means are robust. For word-level numbers, train with float32 analysis (the "
                   "default), or see which layers the Layer scan's precision check flags for this model.", icon="⚠️")
    # a layer in the link counts for the view it was made with; another protocol opens at its own layer
    wanted = st.query_params.get("layer")
    from_link = state.shown_protocol(rid) in (None, protocol)
    start = int(wanted) if from_link and str(wanted).isdigit() and int(wanted) <= n_layers else summary["eval_layer"]
    state.set_shown_protocol(rid, protocol)
    eval_layer = st.select_slider("Evaluation layer", options=list(range(n_layers + 1)), value=start,
                                  format_func=lambda k: f"{k} ({layer_name(k, n_layers)})",
                                  key=f"compare-layer-{rid}-{protocol}",
                                  help="the protocol's own evaluation layer is preselected; every layer was measured")
    wanted = st.query_params.get("set")
    sets_shown = ["both", "trained", "control"]
    focus = st.radio("Sets shown", sets_shown, horizontal=True, index=sets_shown.index(wanted)
                     if wanted in sets_shown else 0)
    reflect(run=rid, protocol=protocol, layer=eval_layer, set=None if focus == "both" else focus)
    c1, c2, c3 = st.columns([1, 1, 1])
    with c1:
        copy_link("run", "protocol", "layer", "set")
    export_buttons(run, c2, c3)
    data = layers[layers["layer"] == eval_layer].reset_index(drop=True)
    if focus != "both":
        data = data[data["set"] == focus].reset_index(drop=True)
    groups = list(dict.fromkeys(data["set"]))
    if eval_layer == summary["eval_layer"]:
        at_layer = {g: summary["groups"][g] for g in groups}
    else:  # a layer picked after seeing them all is one of many: its p-values are corrected across layers
        at_layer = groups_at_layer(data, retrieval, layer_stats, eval_layer, seed=int(cfg.get("seed") or 0))
    st.subheader(f"What changed at layer {eval_layer} ({layer_name(eval_layer, n_layers)}), {protocol}")
    st.caption(layer_choice_note(cfg, eval_layer, summary["eval_layer"]))
    cond = summary.get("conditioning") or {}
    if cond.get("ill_conditioned_layers"):
        ill = cond["ill_conditioned_layers"]
        text = (f"Figures use {cond['weights']}. Rounding those weights to bf16 first moves single pairs by more than "
                f"1e-3 at layers {', '.join(map(str, ill))}: per-pair values there are ill-conditioned (layer means "
                f"are robust).")
        if eval_layer in ill:
            st.warning(text + f" Layer {eval_layer} is one of them: read its word-level numbers with care.",
                       icon="⚠️")
        else:
            st.caption(text)
    view = cell_view(run, protocol)
    show_evidence(at_layer, f"{rid}-L{eval_layer}")
    if view is not None and eval_layer == summary["eval_layer"]:
        cell_panel(view, f"{rid}-{protocol}")
    elif view is not None:
        st.caption(f"This run is one of {len(view['units'])} runs of cell {view['cell']} (seeds, placebo): their "
                   f"joint result is shown at the protocol's own layer {summary['eval_layer']}.")
    at = curve[curve["layer"] == eval_layer]
    base_rows = []
    for g in groups:
        b = at[(at["set"] == g) & (at["phase"] == "before")].iloc[0]
        a = at[(at["set"] == g) & (at["phase"] == "after")].iloc[0]
        base_rows.append({"set": g, "shuffled before": b["shuffled_mean"], "shuffled after": a["shuffled_mean"],
                          "gap before": b["gap"], "gap after": a["gap"], "P@1 NN before": b["p1_nn"],
                          "P@1 NN after": a["p1_nn"], "P@1 CSLS before": b["p1_csls"],
                          "P@1 CSLS after": a["p1_csls"], "chance P@1": b["chance_p1"]})
    with st.expander("The layer's shuffled baseline, gap and P@1 before and after"):
        st.dataframe(pd.DataFrame(base_rows), hide_index=True, width="stretch",
                     column_config={c: st.column_config.NumberColumn(format="%.4f") for c in base_rows[0]
                                    if c != "set"})
        download_csv(pd.DataFrame(base_rows), f"baselines_{rid}_L{eval_layer}.csv", "Download the baselines (CSV)",
                     key=f"dl-baselines-{rid}")
    source = (f"run {rid} · {protocol} protocol · layer {eval_layer} · pooling {summary.get('pooling')} · "
              f"{summary.get('precision', 'compute dtype')} analysis")
    side_by_side(data, groups, "before", "after", f"{rid}-{protocol}", source=source)
    st.subheader("The whole layer curve before vs after")
    cols = st.columns(len(groups))
    for col, g in zip(cols, groups, strict=True):
        with col:
            plot(before_after_curve_figure(curve, g, eval_layer, cfg.get("target_layers")),
                 key=f"curve-{rid}-{protocol}-{g}", source=f"run {rid} · {protocol} protocol · set {g}")
    download_csv(curve, f"curve_{rid}.csv", "Download the before/after curve (CSV)", key="dl-curve-run")
    word_table(with_hits(data, retrieval, eval_layer), f"{rid}-{protocol}-L{eval_layer}")
    st.subheader("Downstream benchmarks: base vs tuned")
    has_results = downstream_results(run, rid)
    if not has_results:
        st.caption("Does the tuning keep (or help) what the model could already do? Not measured for this run yet.")
    if run.has_weights() and not run.is_active():
        with st.expander("Run benchmarks" + (" again" if has_results else ""), expanded=not has_results):
            downstream_panel(run, key=f"downstream-{rid}")
else:
    upload = st.file_uploader("Per-pair table with before and after columns (CSV or TSV)", type=["csv", "tsv", "txt"])
    if upload is None:
        st.info("Upload a table with one row per word pair, e.g. one published with a paper.")
        st.stop()
    try:
        sep = "\t" if upload.name.lower().endswith((".tsv", ".txt")) else ","
        df = read_csv(upload.getvalue(), sep=sep, keep_default_na=True, na_values=None)
    except Exception as exc:
        st.error(f"Cannot read {md(upload.name)} as a table: {md(exc)}")
        st.stop()
    cols = list(df.columns)
    numeric = [c for c in cols if pd.api.types.is_numeric_dtype(df[c])]
    c1, c2, c3, c4 = st.columns(4)
    before = c1.selectbox("Before column", cols, index=cols.index(numeric[0]) if numeric else 0)
    after = c2.selectbox("After column", cols, index=cols.index(numeric[1]) if len(numeric) > 1 else 0)
    guess = guess_group_column(cols) or "(none)"
    group = c3.selectbox("Group column", ["(none)"] + cols, index=(["(none)"] + cols).index(guess))
    drop = c4.checkbox("Drop rows with missing numbers", False)
    try:
        table, used = compare_table(df, before, after, None if group == "(none)" else group, drop_nan=drop)
    except Exception as exc:
        show_error(exc)
        st.stop()
    st.caption(f"Using before = {md(before)}, after = {md(after)}"
               + (f", groups from {md(group)}" if group != "(none)" else "")
               + (f"; dropped {used.dropped} row(s) with a missing number." if used.dropped else "."))
    show_stats(table, "imported")
    data = used.df.rename(columns={before: "before", after: "after"})
    data["set"] = data[group].astype(str) if group != "(none)" else "all"
    data["change"] = data["after"] - data["before"]
    groups = list(dict.fromkeys(data["set"]))
    side_by_side(data, groups, "before", "after", "imported")
    word_table(data, "imported")
