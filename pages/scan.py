"""Layer scan: translation-pair cosine at every layer, beside shuffled pairs and retrieval."""

import streamlit as st

from tli_core.alignment import CENTERING, check_scope, indistinguishable_layers, layer_noise, suggest_layers
from tli_core.embeddings import POOLINGS
from tli_core.figures import curve_figure, heatmap_figure, mark_gap_peak, mark_layers
from tli_core.precision import NOISE_LIMIT, PRECISIONS
from ui import state
from ui.models import cached_scan, get_pairs, require_model
from ui.widgets import copy_link, download_csv, md, plot, searchable, show_error

st.title("Layer scan")
lm = require_model()
pairs = get_pairs()
n_layers = lm.facts.num_layers
st.caption(f"{md(lm.facts.name)}: hidden states 0–{n_layers} (0 = input embeddings, {n_layers} = final output after "
           f"the norm). Each word is embedded once; all layers come from the same forward pass.")

CENTER_HELP = {"none": "raw cosines (the paper's)", "joint": "subtract the mean of all words first",
               "language": "subtract each language's mean first"}
# the scan's settings: kept for this browser session (a reload brings them back) and in the page's link
SCAN_FORM = {"pooling": "mean", "centering": "none", "precision": "float32", "sets": ["trained", "control"],
             "seed": 0, "show": "trained"}
LINK = tuple(SCAN_FORM)
OPTIONS = {"pooling": list(POOLINGS), "centering": list(CENTERING), "precision": list(PRECISIONS)}


state.init_form("scan", SCAN_FORM, state.checks(
    pooling=lambda v: v in OPTIONS["pooling"], centering=lambda v: v in OPTIONS["centering"],
    precision=lambda v: v in OPTIONS["precision"], sets=lambda v: all(s in ("trained", "control") for s in v),
    show=lambda v: v in ("trained", "control"), seed=lambda v: 0 <= v <= 10**6), link=LINK)


def field(name: str, options=None) -> dict:
    return state.field("scan", name, options)


c1, c2, c3, c4, c5 = st.columns([2, 2, 2, 2, 1])
# a select shows its value whole; what the value means sits under it (a sentence in the select was cut off)
pooling = c1.selectbox("Pooling", OPTIONS["pooling"], **field("pooling", OPTIONS["pooling"]))
centering = c2.selectbox("Mean-centering", OPTIONS["centering"], **field("centering", OPTIONS["centering"]))
precision = c3.selectbox("Analysis precision", OPTIONS["precision"], **field("precision", OPTIONS["precision"]))
which = c4.multiselect("Sets", ["trained", "control"], **field("sets"))
seed = c5.number_input("Shuffle seed", 0, 10**6, **field("seed"),
                       help="seed of the derangement behind the shuffled baseline")
st.caption(f"Pooling **{pooling}**: {POOLINGS[pooling]}. Centering **{centering}**: {CENTER_HELP[centering]}. "
           f"Precision **{precision}**: {PRECISIONS[precision]}.")
state.save_form("scan", SCAN_FORM, link=LINK)
sets = {name: pairs[name] for name in which}

result = cached_scan(lm, sets, pooling, centering, int(seed), precision, compute=False) if sets else None
if result is None and sets:
    n_words = 2 * sum(len(df) for df in sets.values())
    if st.button(f"Run the scan ({n_words} words × {n_layers + 1} layers)", type="primary",
                 icon=":material/play_arrow:"):
        bar = st.progress(0.0, text="embedding words …")
        try:
            cached_scan(lm, sets, pooling, centering, int(seed), precision,
                        progress=lambda phase, d, t, detail="": bar.progress(d / t, text=f"embedded {d} of {t} words"))
            st.rerun()  # show the result without the button
        except Exception as exc:
            show_error(exc)
        bar.empty()
if result is None:
    st.info("Choose the settings and run the scan." if sets else "Pick at least one set.")
    st.stop()

st.caption(f"Scan took {result.seconds:.2f} s in {result.stats.forwards} forward(s) (cached: changing a page or "
           f"coming back does not recompute it). Pooling {result.pooling}, centering {result.centering}, analysis "
           f"precision {result.precision}.")
flagged = result.flagged_layers
if result.precision_report is not None:
    worst = result.precision_report["max_abs_delta"].max()
    text = (f"Precision check ({result.precision} against float32 on the same weights, "
            f"{check_scope(result.precision_report)}): a pair's cosine moves by up to {worst:.2e}.")
    if flagged:
        st.warning(text + f" Per-pair values at layers {', '.join(map(str, flagged))} move by more than "
                   f"{NOISE_LIMIT:g} and are marked ⚠ below; choose float32 for word-level numbers there.", icon="⚠️")
    else:
        st.caption(text + f" No layer above {NOISE_LIMIT:g}.")
    with st.expander("Precision by layer"):
        st.dataframe(result.precision_report, hide_index=True, width="stretch")
        download_csv(result.precision_report, "scan_precision.csv", "Download the precision check (CSV)",
                     key="dl-precision")
if result.conditioning is not None:
    ill = result.ill_conditioned_layers
    text = ("Float32 analysis on 4-bit weights dequantized straight to float32. Rounding them to bf16 first (as "
            "training and bf16 arithmetic use them) moves a pair's cosine by up to "
            f"{result.conditioning['max_abs_delta'].max():.2e}")
    if ill:
        st.warning(text + f"; beyond {NOISE_LIMIT:g} at layers {', '.join(map(str, ill))}: per-pair values there are "
                   "ill-conditioned (they depend on a rounding choice), layer means are robust.", icon="⚠️")
    else:
        st.caption(text + f"; no layer beyond {NOISE_LIMIT:g}.")
    with st.expander("Dequantization check by layer"):
        st.dataframe(result.conditioning, hide_index=True, width="stretch")
        download_csv(result.conditioning, "scan_dequantization.csv", "Download the dequantization check (CSV)",
                     key="dl-conditioning")
    flagged = sorted(set(flagged) | set(ill))
if state.form_value("scan", "show") not in sets:
    state.set_form_value("scan", "show", list(sets)[0])
show = st.radio("Curve of", list(sets), horizontal=True, **field("show", list(sets)))
state.save_form("scan", SCAN_FORM, link=LINK)
copy_link(*LINK)
curve = result.curve
choose = st.radio("Suggest the target layer from", ["all pairs of the set", "a held-out split"], horizontal=True,
                  key=f"choose-{show}",
                  help="Choosing the layer with the largest gap on the same pairs that are later evaluated at that "
                       "layer is double-dipping. A held-out split chooses on half of the Swahili headwords and "
                       "checks the choice on the other half; the Train page records which was done, and Compare "
                       "says it.")
sugg = suggest_layers(curve, show, noise=layer_noise(result.precision_report), detail=result.details.get(show),
                      held_out=choose == "a held-out split", seed=int(seed))
state.set_scan_suggestion(sugg, lm.spec, result.seconds / max(1, 2 * len(result.pairs)))
flat = indistinguishable_layers(curve, set_name=show)
m1, m2, m3 = st.columns(3)
for col, key, label in ((m1, "raw_peak", "Raw-cosine peak (the paper's rule)"),
                        (m2, "gap_peak", "Largest gap over shuffled pairs"),
                        (m3, "retrieval_peak", "Best retrieval (P@1, CSLS)")):
    tied = sugg["ties"][key]
    if key == "gap_peak" and "gap_ci" in sugg:
        lo, hi = sugg["gap_ci"]
        others = [k for k in tied if k != sugg[key]]
        col.metric(label + (" (held-out choice)" if "held_out" in sugg else ""), f"layer {sugg[key]}",
                   f"95% CI {lo:+.4f} … {hi:+.4f}; not distinguishable: "
                   + (", ".join(map(str, others)) if others else "none"), delta_color="off",
                   help="bootstrap over Swahili headwords; a layer is not distinguishable when the CI of its gap's "
                        "difference to the best layer's reaches 0")
        continue
    col.metric(label, f"layer {sugg[key]}", f"tied within the noise: {', '.join(map(str, tied))}"
               if len(tied) > 1 else None, delta_color="off")
if "held_out" in sugg:
    h = sugg["held_out"]
    lo, hi = h["check_ci"]
    text = (f"Chosen on {h['select_headwords']} headwords: layer {h['layer']}. On the other {h['check_headwords']} "
            f"headwords its gap is {h['check_gap']:+.4f} (95% CI {lo:+.4f} … {hi:+.4f}); their own best layer is "
            f"{h['check_best']}.")
    (st.success if h["confirmed"] else st.warning)(
        text + (" The choice holds on words it never saw." if h["confirmed"] else
                " The held-out half distinguishes another layer: the choice does not carry over."),
        icon=":material/fact_check:")
if flat:
    where = "every layer" if len(flat) == n_layers + 1 else f"{len(flat)} of {n_layers + 1} layers " \
        f"({', '.join(map(str, flat))})"
    st.warning(f"At {where}, true translation pairs are about as similar as shuffled pairs (gap < 0.02). A high "
               f"cosine there reflects what all words share (e.g. massive first-token activations), not alignment: "
               f"look at the gap and retrieval panels, and at Artifact diagnostics.", icon="⚠️")
if sugg["raw_peak"] != sugg["gap_peak"]:
    st.info(f"The raw-cosine peak (layer {sugg['raw_peak']}) is not where true pairs stand out most from shuffled "
            f"ones (layer {sugg['gap_peak']}). The Train page keeps the paper's layer 2 and offers the gap peak as a "
            f"one-click choice.")

fig = curve_figure(curve, show, flagged=flagged, precision=result.precision if result.conditioning is None else
                   f"{result.precision} analysis, or 4-bit weights rounded to bf16")
mark_layers(fig, {"raw-cosine peak": sugg["raw_peak"], "gap peak": sugg["gap_peak"]})
if "gap_bootstrap" in sugg:
    mark_gap_peak(fig, sugg["gap_bootstrap"])
plot(fig, key=f"scan-curve-{show}")
table = curve[curve["set"] == show].drop(columns=["set"])
with st.expander("Curve as a table"):
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        c: st.column_config.NumberColumn(format="%.5f") for c in ("true_mean", "true_std", "shuffled_mean",
                                                                  "shuffled_std", "gap")})
download_csv(curve, "scan_curve.csv", "Download the curve (CSV, all sets)", key="dl-curve")

st.subheader("Word by word")
words = result.pairs[result.pairs["set"] == show]
found = searchable(words, key="scan-search")
st.caption("Each pair's cosine at every layer. Sort by any column; search filters the heatmap and the table.")
plot(heatmap_figure(found, max_words=80, flagged=flagged), key=f"scan-heatmap-{show}")
st.dataframe(found, hide_index=True, width="stretch", height=380,
             column_config={c: st.column_config.NumberColumn(
                 c + (" ⚠" if int(c.split("_")[1]) in flagged else ""), format="%.4f",
                 help=f"per-pair error above {NOISE_LIMIT:g} in {result.precision}"
                 if int(c.split("_")[1]) in flagged else None)
                 for c in found.columns if c.startswith("layer_")})
download_csv(result.pairs, "scan_pairs.csv", "Download per-pair cosines (CSV, all sets)", key="dl-pairs")
