"""Artifact diagnostics: first-token norms and massive activations, and the scan without them."""

import streamlit as st

from tli_core.diagnostics import compare_without_artifacts, dominated_layers
from tli_core.figures import activation_figure, variants_figure
from ui import state
from ui.models import frame_hash, get_pairs, require_model, spec_key
from ui.widgets import copy_link, download_csv, plot, show_error

st.title("Artifact diagnostics")
st.caption("Does a high similarity come from the words, or from a few massive activations? Per layer: the first "
           "token's hidden-state norm (BOS, or the first word piece when there is no BOS) against the other tokens', "
           "and the largest |activation| against the median, with the dimensions that carry it. Then the scan again "
           "with the first token, or those dimensions, left out.")
lm = require_model()
pairs = get_pairs()
DIAG_FORM = {"which": "trained", "sample": 200, "dims": ""}  # kept for this browser session and in the link
state.init_form("diagnostics", DIAG_FORM, state.checks(which=lambda v: v in ("trained", "control"),
                                                       sample=lambda v: 20 <= v <= 5000), link=tuple(DIAG_FORM))
c1, c2, c3 = st.columns(3)
which = c1.radio("Set", ["trained", "control"], horizontal=True,
                 **state.field("diagnostics", "which", ["trained", "control"]))
sample = c2.number_input("Words sampled for the activation statistics", 20, 5000,
                         **state.field("diagnostics", "sample"))
dims_text = c3.text_input("Dimensions to leave out (empty = the ones found)",
                          **state.field("diagnostics", "dims"))
state.save_form("diagnostics", DIAG_FORM, link=tuple(DIAG_FORM))
copy_link(*DIAG_FORM)
key = (spec_key(lm.spec), frame_hash(pairs[which]), which, int(sample), dims_text)
cache = state.results("diagnostics")
if key not in cache and st.button("Run diagnostics", type="primary", icon=":material/troubleshoot:"):
    try:
        dims = [int(d) for d in dims_text.replace(" ", "").split(",") if d] or None
        with st.spinner("activation statistics and three scans …"):
            cache[key] = compare_without_artifacts(lm.model, lm.tokenizer, {which: pairs[which]}, dims=dims,
                                                   sample=int(sample))
    except Exception as exc:
        show_error(exc)
if key not in cache:
    st.info("Run the diagnostics for this model and set.")
    st.stop()

comp = cache[key]
report = comp.report
dominated = dominated_layers(report)
if dominated:
    st.warning(f"The first token's norm is at least 5× the other tokens' at layers {', '.join(map(str, dominated))}: "
               f"mean pooling there averages in one huge vector shared by every word.", icon="⚠️")
if comp.dims:
    st.info(f"Massive dimensions (largest mean |activation| where max/median ≥ 100): {', '.join(map(str, comp.dims))}.")
plot(activation_figure(report), key="diag-activations")
st.dataframe(report, hide_index=True, width="stretch")
download_csv(report, "activation_report.csv", "Download the activation report (CSV)", key="dl-act")
plot(variants_figure(comp.curves, which), key="diag-variants")
curves = comp.curves[comp.curves["set"] == which]
pivot = curves.pivot(index="layer", columns="variant", values="gap")
st.caption("Gap (true − shuffled) per layer, for each variant:")
st.dataframe(pivot, width="stretch")
download_csv(comp.curves, "scan_variants.csv", "Download the three curves (CSV)", key="dl-var")
