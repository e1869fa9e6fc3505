"""Embedding map: Swahili and English words in 2-D at one layer, before and after a run."""

import streamlit as st

from tli_core.figures import embedding_map_figure
from tli_core.layers import layer_name
from tli_core.projection import METHODS, map_points
from tli_core.runs import list_runs
from ui import state
from ui.models import get_pairs, require_model, runs_dir, spec_key
from ui.widgets import copy_link, download_csv, plot, run_picker, show_error

st.title("Embedding map")
st.caption("Translation pairs are joined by a line; circles are trained pairs, diamonds control pairs. Before and "
           "after are projected together, so the two panels share one map.")
lm = require_model()
n = lm.facts.num_layers
runs = [r for r in list_runs(runs_dir()) if r.has_weights() and r.model_spec() == lm.spec]
c1, c2, c3, c4 = st.columns(4)
with c1:
    run = run_picker(runs, "Run (after)", none_label="(none: base model only)")
default_layer = (run.summary() or {}).get("eval_layer", n - 1) if run else n - 1
# kept for this browser session and in the page's link (?run=...&layer=...&method=...)
MAP_FORM = {"layer": int(default_layer), "method": METHODS[0], "max_pairs": 120}
LINK = tuple(MAP_FORM)
state.init_form("map", MAP_FORM, state.checks(layer=lambda v: 0 <= v <= n, method=lambda v: v in METHODS,
                                              max_pairs=lambda v: 10 <= v <= 2000), link=LINK)
layer = c2.selectbox("Layer", list(range(n + 1)), **state.field("map", "layer", list(range(n + 1))),
                     format_func=lambda k: f"{k} ({layer_name(k, n)})")
method = c3.selectbox("Projection", METHODS, **state.field("map", "method", METHODS),
                      format_func=lambda m: {"pca": "PCA", "tsne": "t-SNE"}[m])
max_pairs = c4.number_input("Pairs per set (sampled)", 10, 2000, **state.field("map", "max_pairs"))
state.save_form("map", MAP_FORM, link=LINK)
copy_link("run", *LINK)
sets = run_sets = None
if run is not None:
    sets = {"trained": run.pairs("trained"), "control": run.pairs("control")}
else:
    sets = get_pairs()
key = (spec_key(lm.spec), run.id if run else None, layer, method, int(max_pairs))
cache = state.results("maps")
if key not in cache and st.button("Draw the map", type="primary", icon=":material/scatter_plot:"):
    try:
        with st.spinner(f"embedding words at layer {layer} and projecting ({method}) …"):
            cache[key] = map_points(lm.model, lm.tokenizer, sets, layer, run.config().pooling if run else "mean",
                                    weights_dir=run.final_weights() if run else None, method=method,
                                    max_pairs=int(max_pairs))
    except Exception as exc:
        show_error(exc)
if key in cache:
    points = cache[key]
    plot(embedding_map_figure(points, f"Layer {layer} ({layer_name(layer, n)}), {method.upper()}"),
         key="embedding-map")
    download_csv(points, "embedding_map.csv", "Download the points (CSV)", key="dl-map")
