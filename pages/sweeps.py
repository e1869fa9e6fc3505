"""Sweeps: target layer(s) x method (LoRA ranks, full fine-tuning) x placement, a queue of runs, one heatmap."""


import streamlit as st

from tli_core.config import PLACEMENTS, TLIConfig
from tli_core.figures import sweep_heatmap
from tli_core.jobs.runner import resume_sweep, start_sweep
from tli_core.layers import layer_name, paper_eval_layer
from tli_core.stats import CORRECTIONS
from tli_core.sweeps import (
    Sweep,
    SweepSpec,
    best_cell,
    list_sweeps,
    parse_grid_layers,
    significant_gain,
    sweep_results,
    variant_label,
)
from ui import state
from ui.models import get_pairs, pair_names, pairs_file, require_model, runs_dir
from ui.widgets import copy_link, download_csv, md, plot, reflect, show_error

st.title("Sweeps")
st.caption("Where to inject and how much: every cell of the grid is an ordinary run (one at a time, resumable); the "
           "heatmap shows each cell's change on the control set, with p-values corrected across the grid.")
lm = require_model()
pairs = get_pairs()
n = lm.facts.num_layers

OVERLAP_CONTROL = "Accept pairs that are in both sets"

# the grid's settings, kept for this browser session (a reload or a restart brings them back); widgets, not a
# form, so nothing typed waits for a submit to be kept, and Enter starts nothing
SWEEP_FORM = {"layers": "1,2", "ranks": [4, 16], "full": False, "placements": ["all"], "epochs": 2, "sub_t": 0,
              "lr": 2e-4, "correction": CORRECTIONS[0], "eval_layer": paper_eval_layer(n), "overlap": False}
RANKS = [1, 2, 4, 8, 16, 32, 64]


state.init_form("sweep", SWEEP_FORM, state.checks(
    ranks=lambda v: all(r in RANKS for r in v), placements=lambda v: all(p in PLACEMENTS for p in v),
    correction=lambda v: v in CORRECTIONS, eval_layer=lambda v: 0 <= v <= n))


def key(field: str) -> str:
    return state.form_key("sweep", field)


c1, c2, c3, c4 = st.columns(4)
layers = c1.text_input("Target-layer settings", key=key("layers"), help="comma-separated; '+' trains layers "
                                                                         "together, e.g. 1,2,1+2")
ranks = c2.multiselect("LoRA ranks", RANKS, key=key("ranks"))
full = c3.checkbox("Add full fine-tuning", key=key("full"), help="one more column: the weights of the blocks "
                                                                 "themselves train (float32), same loss and evaluation "
                                                                 "— the baseline LoRA is compared against")
placements = c4.multiselect("Placements (blocks that train)", list(PLACEMENTS), key=key("placements"),
                            help="all = every block (paper); up_to_target = blocks 1..target; early = first half; "
                                 "late = second half")
c1, c2, c3, c4 = st.columns(4)
epochs = c1.number_input("Epochs per cell", 1, 100, key=key("epochs"))
sub_t = c2.number_input("Trained subset (0 = all)", 0, 10**6, key=key("sub_t"))
lr = c3.number_input("Learning rate", 1e-7, 1.0, format="%.1e", key=key("lr"))
correction = c4.selectbox("Correction", CORRECTIONS, key=key("correction"),
                          help="bh = Benjamini–Hochberg (FDR); holm = Holm (FWER)")
c1, c2 = st.columns([3, 1])
eval_layer = c1.select_slider("Evaluation layer (studio protocol, the heatmap's headline)", list(range(n + 1)),
                              key=key("eval_layer"), format_func=lambda k: f"{k} ({layer_name(k, n)})")
overlap = c2.checkbox(OVERLAP_CONTROL, key=key("overlap"), help=TLIConfig.help()["allow_overlap"])
state.save_form("sweep", SWEEP_FORM)
start = st.button("Start the sweep", type="primary", icon=":material/grid_on:")

if start:
    try:
        base = TLIConfig(model=lm.spec, trained_pairs=pairs_file(pairs["trained"]),
                         control_pairs=pairs_file(pairs["control"]), epochs=int(epochs),
                         trained_subset=int(sub_t) or None, learning_rate=float(lr), eval_layer=int(eval_layer),
                         allow_overlap=overlap)
        spec = SweepSpec(base=base, target_layers=parse_grid_layers(layers), ranks=sorted(ranks),
                         placements=placements, correction=correction,
                         methods=(["lora"] if ranks else []) + (["full"] if full else []))
        sweep = start_sweep(spec, runs_dir(), trained=pairs["trained"], control=pairs["control"],
                            pair_names=pair_names())
        state.set_watched_sweep(sweep.id)
        state.set_form_value("sweeps", "pick", sweep.id)  # show the new sweep (its selector is drawn below)
        st.toast(f"Sweep {sweep.id} started: {len(sweep.cells())} cells")
    except Exception as exc:
        show_error(exc, overlap_control=OVERLAP_CONTROL)

sweeps = list_sweeps(runs_dir())
if not sweeps:
    st.info("No sweeps yet.")
    st.stop()
ids = [s.id for s in sweeps]
# first view: the link's sweep, else the one just started, else the newest
if state.form_value("sweeps", "pick") not in ids:
    linked, started = st.query_params.get("sweep"), state.watched_sweep()
    state.set_form_value("sweeps", "pick", linked if linked in ids else started if started in ids else ids[0])
# the id only: the sweep's state is shown (and kept current) by the live view below, not frozen in this label
sid = st.selectbox("Sweep", ids, key=state.form_key("sweeps", "pick"))
reflect(sweep=sid)
copy_link("sweep")
sweep = next(s for s in sweeps if s.id == sid)


def show(sweep: Sweep) -> None:
    status = sweep.status()
    cells = sweep.cells()
    done = sum(c["state"] == "done" for c in cells)
    invalid = sum(c["state"] == "invalid" for c in cells)
    st.progress((done + invalid) / len(cells), text=f"{status.get('state')}: {done} of {len(cells)} cells finished"
                + (f", {invalid} could not run" if invalid else ""))
    if status.get("state") == "invalid":
        st.error(md(status.get("message") or "no cell could run"), icon="⚠️")
    elif status.get("message"):
        st.caption(md(status["message"]))
    if status.get("state") in ("queued", "running") and st.button("Stop the sweep", icon=":material/stop_circle:"):
        sweep.request_stop()
    if status.get("state") in ("interrupted", "stopped", "failed") and st.button("Resume", icon=":material/replay:"):
        try:
            resume_sweep(sweep)
        except Exception as exc:
            show_error(exc)
    method = st.radio("Correction", CORRECTIONS, horizontal=True, key=f"corr-{sweep.id}",
                      index=CORRECTIONS.index(sweep.spec().correction))
    results = sweep_results(sweep, method)
    if not done:
        for _, r in results[results["state"] == "invalid"].iterrows():
            st.caption(f"Cell {r['cell']} not run: {md(r['reason'])}")
        return
    best = best_cell(results)
    if best is not None:
        row = results[results["cell"] == best].iloc[0]
        text = (f"layer(s) {row['target layers']}, {variant_label(row['method'], row['rank'])}, "
                f"{md(row['placement'])} — control change {row['control change']:+.4f} "
                f"({row['control % change']:+.2f} %), corrected p = {row['control p corrected']:.3g}")
        if significant_gain(results, best):
            st.success(f"Best cell: {text}", icon=":material/star:")
        else:
            st.info(f"No cell raised the control set significantly. Largest change: {text}", icon=":material/info:")
    c1, c2 = st.columns(2)
    with c1:
        plot(sweep_heatmap(results, "control change", best), key=f"sweep-change-{sweep.id}")
    with c2:
        plot(sweep_heatmap(results, "control P@1 change", best,
                           title="control P@1 (CSLS) change per cell"), key=f"sweep-p1-{sweep.id}")
    st.dataframe(results, hide_index=True, width="stretch")
    download_csv(results, f"sweep_{sweep.id}.csv", "Download the results (CSV)", key=f"dl-sweep-{sweep.id}")
    for _, r in results[results["state"] == "invalid"].iterrows():
        st.caption(f"Cell {r['cell']} not run: {md(r['reason'])}")


@st.fragment(run_every=2.0)
def live(sweep_id: str) -> None:
    s = Sweep(runs_dir() / "sweeps" / sweep_id)
    show(s)
    if s.status().get("state") not in ("queued", "running"):
        st.rerun()


if sweep.status().get("state") in ("queued", "running"):
    live(sweep.id)
else:
    show(sweep)
