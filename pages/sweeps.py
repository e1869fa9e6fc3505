"""Sweeps: target layer(s) x method (LoRA ranks, full fine-tuning) x placement x seeds, with a placebo arm and
benchmarks, run on Ray; each cell judged by its specific effect over seeds and against its placebo."""


import streamlit as st

from tli_core.config import PLACEMENTS, TLIConfig
from tli_core.downstream import TASKS
from tli_core.errors import TLIError
from tli_core.figures import sweep_heatmap
from tli_core.grid import estimate_grid
from tli_core.jobs.runner import start_sweep
from tli_core.layers import layer_name, paper_eval_layer
from tli_core.stats import CORRECTIONS
from tli_core.sweeps import (
    Sweep,
    SweepSpec,
    best_cell,
    downstream_grid,
    leading_cell,
    list_sweeps,
    no_star_reason,
    parse_grid_layers,
    sweep_results,
    variant_label,
)
from tli_core.util import parse_seeds
from ui import state
from ui.grid import sweep_progress
from ui.models import get_pairs, model_or_progress, pair_names, pairs_file, runs_dir, slow_poll
from ui.widgets import copy_link, download_csv, hide_script_stop, md, plot, reflect, show_error

st.title("Sweeps")
hide_script_stop()  # a job page: the sweep's Stop is the only Stop
st.caption("Where to inject and how much: every unit of the grid (a cell's setting × seed × arm) is an ordinary run, "
           "run on Ray several at a time (or on a cluster) and resumable. The heatmap shows each cell's specific "
           "effect on the control set — the change of cos(sw, en) beyond what non-translations share — over its "
           "seeds, with p-values corrected across the grid; ★ marks only an improvement that is specific, beyond "
           "seed noise and beyond the placebo.")

OVERLAP_CONTROL = "Accept pairs that are in both sets"

# the grid's settings, kept for this browser session (a reload or a restart brings them back); widgets, not a
# form, so nothing typed waits for a submit to be kept, and Enter starts nothing
SWEEP_FORM = {"layers": "1,2", "ranks": [4, 16], "full": False, "placements": ["all"], "epochs": 2, "sub_t": 0,
              "lr": 2e-4, "correction": CORRECTIONS[0], "eval_layer": None, "overlap": False,
              "seeds": "1,2,3", "placebo": True, "tasks": [], "limit": 0, "address": "", "parallel": 0}
RANKS = [1, 2, 4, 8, 16, 32, 64]


def new_sweep(lm) -> None:
    """The grid's form and its Start button (they need the model: its layers, its spec)."""
    pairs = get_pairs()
    n = lm.facts.num_layers
    defaults = SWEEP_FORM | {"eval_layer": paper_eval_layer(n)}
    state.init_form("sweep", defaults, state.checks(
        ranks=lambda v: all(r in RANKS for r in v), placements=lambda v: all(p in PLACEMENTS for p in v),
        correction=lambda v: v in CORRECTIONS, eval_layer=lambda v: 0 <= v <= n))

    def field(name: str, options=None) -> dict:
        return state.field("sweep", name, options)

    c1, c2, c3, c4 = st.columns(4)
    layers = c1.text_input("Target-layer settings", **field("layers"), help="comma-separated; '+' trains layers "
                                                                             "together, e.g. 1,2,1+2")
    ranks = c2.multiselect("LoRA ranks", RANKS, **field("ranks"))
    full = c3.checkbox("Add full fine-tuning", **field("full"),
                       help="one more column: the weights of the blocks themselves train (float32), same loss and "
                            "evaluation — the baseline LoRA is compared against")
    placements = c4.multiselect("Placements (blocks that train)", list(PLACEMENTS), **field("placements"),
                                help="all = every block (paper); up_to_target = blocks 1..target; early = first half; "
                                     "late = second half")
    c1, c2, c3, c4 = st.columns(4)
    epochs = c1.number_input("Epochs per cell", 1, 100, **field("epochs"))
    sub_t = c2.number_input("Trained subset (0 = all)", 0, 10**6, **field("sub_t"))
    lr = c3.number_input("Learning rate", 1e-7, 1.0, format="%.1e", **field("lr"))
    correction = c4.selectbox("Correction", CORRECTIONS, **field("correction", CORRECTIONS),
                              help="bh = Benjamini–Hochberg (FDR); holm = Holm (FWER)")
    c1, c2 = st.columns([3, 1])
    eval_layer = c1.select_slider("Evaluation layer (studio protocol, the heatmap's headline)", list(range(n + 1)),
                                  **field("eval_layer"), format_func=lambda k: f"{k} ({layer_name(k, n)})")
    overlap = c2.checkbox(OVERLAP_CONTROL, **field("overlap"), help=TLIConfig.help()["allow_overlap"])
    c1, c2, c3, c4 = st.columns(4)
    seeds_text = c1.text_input("Seeds", **field("seeds"),
                               help="one run per seed and cell, e.g. 1,2,3: a cell is judged against seed-to-seed "
                                    "variation (seeds as replicates)")
    placebo = c2.checkbox("Placebo per seed", **field("placebo"),
                          help="the same settings and seed trained on deranged pairs (no Swahili word with one of its "
                               "translations): TLI − placebo is the difference-in-differences a ★ needs")
    tasks = c3.multiselect("Benchmarks in every unit", list(TASKS), **field("tasks"),
                           help="lm-eval, base vs tuned, inside each unit: does the tuning keep zero-shot skill? "
                                "Hub tasks need a network; the tli_ tasks run offline")
    limit = c4.number_input("Items per benchmark (0 = all)", 0, 10**6, **field("limit"))
    c1, c2 = st.columns([3, 1])
    address = c1.text_input("Ray cluster address (empty = a local Ray runtime on this machine)", **field("address"),
                            placeholder="auto, HOST:6379 or ray://HOST:10001",
                            help="an existing Ray cluster (`ray start --head` on one node, `ray start --address=…` "
                                 "on the others). Empty: $RAY_ADDRESS if set, else a local runtime started for the "
                                 "sweep")
    parallel = c2.number_input("Units at a time (0 = as the machine allows)", 0, 4096, **field("parallel"))
    state.save_form("sweep", defaults)
    try:
        seeds = parse_seeds(seeds_text) or [TLIConfig().seed]
        n_cells = len(parse_grid_layers(layers)) * max(1, len(placements)) * (len(ranks) + (1 if full else 0))
        n_units = n_cells * len(seeds) * (2 if placebo else 1)
        estimate = ""
        if n_units and not address.strip():
            preview = SweepSpec(base=TLIConfig(model=lm.spec, epochs=int(epochs), trained_subset=int(sub_t) or None),
                                target_layers=parse_grid_layers(layers), ranks=sorted(ranks) or [16],
                                placements=placements or ["all"], seeds=seeds, placebo=placebo,
                                methods=(["lora"] if ranks else []) + (["full"] if full else []) or ["lora"])
            seconds, slots, basis = estimate_grid(preview, runs_dir(), len(pairs["trained"]), len(pairs["control"]),
                                                  int(parallel) or None, n)
            estimate = (f" On this machine: {slots.slots} at a time ({md(slots.why)})" + (
                f", about **{seconds / 60:.0f} min** in all ({md(basis)})." if seconds is not None
                else f"; {md(basis)}."))
        st.caption(f"{n_cells} cell(s) × {len(seeds)} seed(s)" + (" × 2 arms (TLI, placebo)" if placebo else "")
                   + f" = **{n_units} runs**." + estimate
                   + ("" if len(seeds) > 1 and placebo else
                      " Without several seeds and a placebo no cell can earn a ★."))
    except Exception as exc:
        show_error(exc)
    start = st.button("Start the sweep", type="primary", icon=":material/grid_on:")

    if start:
        try:
            base = TLIConfig(model=lm.spec, trained_pairs=pairs_file(pairs["trained"]),
                             control_pairs=pairs_file(pairs["control"]), epochs=int(epochs),
                             trained_subset=int(sub_t) or None, learning_rate=float(lr), eval_layer=int(eval_layer),
                             allow_overlap=overlap)
            spec = SweepSpec(base=base, target_layers=parse_grid_layers(layers), ranks=sorted(ranks),
                             placements=placements, correction=correction,
                             methods=(["lora"] if ranks else []) + (["full"] if full else []),
                             seeds=parse_seeds(seeds_text), placebo=placebo, tasks=list(tasks),
                             limit=int(limit) or None)
            sweep = start_sweep(spec, runs_dir(), trained=pairs["trained"], control=pairs["control"],
                                pair_names=pair_names(), address=address.strip() or None,
                                parallel=int(parallel) or None)
            state.set_watched_sweep(sweep.id)
            state.set_form_value("sweeps", "pick", sweep.id)  # show the new sweep (its selector is drawn below)
            st.toast(f"Sweep {md(sweep.id)} started: {len(sweep.cells())} cells")
        except Exception as exc:
            show_error(exc, overlap_control=OVERLAP_CONTROL)


lm = model_or_progress("a new sweep")  # the sweeps below read only their directories: shown while the model loads
if lm is not None:
    new_sweep(lm)

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
sid = st.selectbox("Sweep", ids, **state.field("sweeps", "pick", ids))
reflect(sweep=sid)
copy_link("sweep")
sweep = next(s for s in sweeps if s.id == sid)


def show(sweep: Sweep) -> None:
    """The sweep's progress and results; a damaged file of this sweep is said in their place."""
    try:
        spec = sweep.spec()
        status = sweep_progress(sweep, sweep.id)
        if status.get("state") != "unreadable":
            show_results(sweep, spec, status)
    except TLIError as exc:
        show_error(exc)


def show_results(sweep: Sweep, spec: SweepSpec, status: dict) -> None:
    method = st.radio("Correction across cells", CORRECTIONS, horizontal=True, key=f"corr-{sweep.id}",
                      index=CORRECTIONS.index(spec.correction))
    results = sweep_results(sweep, method)
    if results["control specific Δ"].isna().all():
        for _, r in results[results["state"] == "invalid"].iterrows():
            st.caption(f"Cell {r['cell']} not run: {md(r['reason'])}")
        return
    best = best_cell(results)
    if best is not None:
        row = results[results["cell"] == best].iloc[0]
        st.success(f"★ Best cell: layer(s) {row['target layers']}, {variant_label(row['method'], row['rank'])}, "
                   f"{md(row['placement'])} — {md(row['verdict'])}", icon=":material/star:")
    else:
        st.info(md(no_star_reason(results)), icon=":material/info:")
        lead = leading_cell(results)
        if lead is not None:
            row = results[results["cell"] == lead].iloc[0]
            st.caption(f"Largest specific effect on the control set: cell {lead} (layer(s) {row['target layers']}, "
                       f"{variant_label(row['method'], row['rank'])}, {md(row['placement'])}) — {md(row['verdict'])}")
    c1, c2 = st.columns(2)
    with c1:
        plot(sweep_heatmap(results, "control specific Δ", best), key=f"sweep-spec-{sweep.id}",
             source=f"sweep {sweep.id} · headline protocol · {status.get('done', 0)} units done")
    with c2:
        plot(sweep_heatmap(results, "control hit@1 CSLS Δ", best,
                           title="control hit@1 (CSLS) change per cell, mean over seeds"), key=f"sweep-hit-{sweep.id}",
             source=f"sweep {sweep.id} · headline protocol")
    st.caption("Raw Δ is the paper's change of the mean cosine; shuffled Δ and non-translation Δ are what moved "
               "without being translations. A raw rise they share is not alignment.")
    lead_cols = ["cell", "target layers", "method", "rank", "placement", "state", "seeds", "placebo", "★",
                 "control specific Δ", "control specific CI low", "control specific CI high",
                 "control specific p corrected", "control p basis", "control hit@1 CSLS Δ", "control TLI − placebo",
                 "control TLI − placebo p corrected", "control raw Δ", "control shuffled Δ",
                 "control non-translation Δ", "verdict"]
    shown = results[lead_cols + [c for c in results.columns if c not in lead_cols]]
    st.dataframe(shown, hide_index=True, width="stretch", column_config={
        c: st.column_config.NumberColumn(format="%.4f") for c in shown.columns
        if shown[c].dtype.kind == "f" and " p" not in c} | {
        c: st.column_config.NumberColumn(format="%.3g") for c in shown.columns if " p" in c})
    download_csv(shown, f"sweep_{sweep.id}.csv", "Download the results (CSV)", key=f"dl-sweep-{sweep.id}")
    if spec.tasks:
        bench = downstream_grid(sweep)
        if len(bench):
            st.subheader("Benchmarks per unit: base vs tuned")
            st.dataframe(bench, hide_index=True, width="stretch")
            download_csv(bench, f"sweep_benchmarks_{sweep.id}.csv", "Download the benchmarks (CSV)",
                         key=f"dl-sweep-bench-{sweep.id}")
    for _, r in results[results["state"] == "invalid"].iterrows():
        st.caption(f"Cell {r['cell']} not run: {md(r['reason'])}")


@st.fragment(run_every=2.0)
def live(sweep_id: str) -> None:
    slow_poll()
    s = Sweep(runs_dir() / "sweeps" / sweep_id)
    show(s)
    if s.status().get("state") not in ("queued", "running"):
        st.rerun()


if sweep.status().get("state") in ("queued", "running"):
    live(sweep.id)
else:
    show(sweep)
