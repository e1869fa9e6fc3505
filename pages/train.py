"""Train: every TLIConfig setting (defaults = the paper), launch a worker process, watch it live."""

import streamlit as st

from tli_core.config import LOSSES, PLACEMENTS, TLIConfig
from tli_core.embeddings import POOLINGS
from tli_core.figures import loss_figure, similarity_figure
from tli_core.jobs.jobdir import ACTIVE
from tli_core.jobs.runner import start_run
from tli_core.layers import layer_name, paper_eval_layer
from tli_core.precision import PRECISIONS
from tli_core.protocols import EVAL_LAYERS, PROTOCOLS
from tli_core.runs import Run, list_runs, newest
from ui import state
from ui.models import get_pairs, pairs_file, require_model, runs_dir
from ui.widgets import md, plot, show_error

st.title("Train")
lm = require_model()
pairs = get_pairs()
n = lm.facts.num_layers
helps = TLIConfig.help()
paper = TLIConfig()
sugg = state.scan_suggestion()
if not sugg or sugg.get("model") != lm.spec or not 0 < sugg["gap_peak"] <= n:
    sugg = None  # a scan of another model (or none yet): start from the paper's layer
default_target = sugg["gap_peak"] if sugg else min(paper.target_layers[0], n)


OVERLAP_CONTROL = "Accept pairs that are in both sets"


def layer_label(k: int) -> str:
    return f"{k} — {layer_name(k, n)}"


with st.form("tli-config"):
    st.markdown(f"**Model:** {md(lm.spec.label())} · **pairs:** {len(pairs['trained'])} trained, "
                f"{len(pairs['control'])} control (change them on the Model and Word pairs pages)")
    st.caption("Defaults are the paper's published settings" + (
        f"; the target layer is prefilled from your scan (largest gap over shuffled pairs; the raw-cosine peak "
        f"is layer {sugg['raw_peak']})." if sugg else "; run the Layer scan to prefill the target layer."))
    st.markdown("##### Where")
    c1, c2 = st.columns(2)
    targets = c1.multiselect("Target layer(s)", list(range(1, n + 1)), default=[default_target],
                             format_func=layer_label, help=helps["target_layers"])
    pooling = c2.selectbox("Training pooling", list(POOLINGS), help=helps["pooling"])
    st.markdown("##### Evaluation")
    c1, c2, c3, c4 = st.columns(4)
    protocols = c1.multiselect("Protocols (first = headline)", list(PROTOCOLS), default=paper.protocols,
                               format_func=lambda p: f"{p} — {PROTOCOLS[p].title}", help=helps["protocols"])
    eval_layer = c2.selectbox("Studio protocol: evaluation layer", list(EVAL_LAYERS) + list(range(n + 1)),
                              format_func=lambda k: {"paper": f"paper — L-1 = {paper_eval_layer(n)}",
                                                     "target": "target — the training layer",
                                                     "last": f"last — {n}"}.get(k, layer_label(k))
                              if isinstance(k, str) else layer_label(k), help=helps["eval_layer"])
    eval_pooling = c3.selectbox("Studio protocol: pooling", list(POOLINGS),
                                index=list(POOLINGS).index(paper.eval_pooling), help=helps["eval_pooling"])
    precision = c4.selectbox("Analysis precision", list(PRECISIONS), help=helps["analysis_precision"])
    st.markdown("##### LoRA")
    c1, c2, c3, c4 = st.columns(4)
    rank = c1.number_input("Rank r", 1, 1024, paper.lora_r, help=helps["lora_r"])
    alpha = c2.number_input("Alpha", 1, 4096, paper.lora_alpha, help=helps["lora_alpha"])
    dropout = c3.number_input("Dropout", 0.0, 0.9, paper.lora_dropout, step=0.01, help=helps["lora_dropout"])
    modules = c4.text_input("Target modules", ",".join(lm.facts.lora_targets), help=helps["target_modules"])
    c1, c2 = st.columns(2)
    placement = c1.selectbox("Adapter blocks", list(PLACEMENTS) + ["custom"], help=helps["adapter_blocks"])
    custom = c2.text_input("Custom blocks (for 'custom')", "1-2", help="blocks numbered 1..L, e.g. 1-4,8")
    st.markdown("##### Loss and optimiser")
    c1, c2, c3, c4 = st.columns(4)
    loss = c1.selectbox("Loss", LOSSES, help=helps["loss"])
    margin = c2.number_input("Triplet margin", 0.0, 2.0, paper.margin, step=0.05, help=helps["margin"])
    temperature = c3.number_input("InfoNCE temperature", 0.001, 10.0, paper.temperature, step=0.01, format="%.3f",
                                  help=helps["temperature"])
    lr = c4.number_input("Learning rate", 1e-7, 1.0, paper.learning_rate, format="%.1e", help=helps["learning_rate"])
    c1, c2, c3, c4 = st.columns(4)
    epochs = c1.number_input("Epochs", 1, 1000, paper.epochs, help=helps["epochs"])
    batch = c2.number_input("Batch size", 2, 4096, paper.batch_size, help=helps["batch_size"])
    warmup = c3.number_input("Warm-up steps", 0, 100000, paper.warmup_steps, help=helps["warmup_steps"])
    seed = c4.number_input("Seed", 0, 2**31 - 1, paper.seed, help=helps["seed"])
    c1, c2, c3, c4 = st.columns(4)
    wd = c1.number_input("Weight decay", 0.0, 1.0, paper.weight_decay, step=0.01, help=helps["weight_decay"])
    clip = c2.number_input("Gradient clipping (0 = off)", 0.0, 1000.0, float(paper.grad_clip or 0.0),
                           help=helps["grad_clip"])
    sub_t = c3.number_input("Trained subset (0 = all)", 0, 10**6, 0, help=helps["trained_subset"])
    sub_c = c4.number_input("Control subset (0 = all)", 0, 10**6, 0, help=helps["control_subset"])
    c1, c2 = st.columns(2)
    early = c1.checkbox("Early exit after the deepest target layer", paper.early_exit, help=helps["early_exit"])
    overlap = c2.checkbox(OVERLAP_CONTROL, False, help=helps["allow_overlap"])
    launch_clicked = st.form_submit_button("Launch training", type="primary", icon=":material/rocket_launch:")

if launch_clicked:
    try:
        config = TLIConfig(
            model=lm.spec, trained_pairs=pairs_file(pairs["trained"]), control_pairs=pairs_file(pairs["control"]),
            trained_subset=int(sub_t) or None, control_subset=int(sub_c) or None, target_layers=sorted(targets),
            protocols=protocols, eval_layer=eval_layer, eval_pooling=eval_pooling, analysis_precision=precision,
            pooling=pooling, lora_r=int(rank), lora_alpha=int(alpha),
            lora_dropout=float(dropout), target_modules=[m.strip() for m in modules.split(",") if m.strip()] or None,
            adapter_blocks=custom if placement == "custom" else placement, loss=loss, margin=float(margin),
            temperature=float(temperature), learning_rate=float(lr), warmup_steps=int(warmup), epochs=int(epochs),
            batch_size=int(batch), weight_decay=float(wd), grad_clip=float(clip) or None, seed=int(seed),
            early_exit=early, allow_overlap=overlap)
        run, _, warnings = start_run(config, runs_dir(), trained=pairs["trained"], control=pairs["control"])
        state.set_watched_run(run.id, warnings)
        st.toast(f"Run {run.id} launched", icon=":material/rocket_launch:")
    except Exception as exc:
        show_error(exc, overlap_control=OVERLAP_CONTROL)


def run_to_watch() -> Run | None:
    """This session's run, else the one training now, else the newest: a reload re-attaches."""
    wanted = state.watched_run()
    runs = list_runs(runs_dir())
    by_id = {r.id: r for r in runs}
    if wanted in by_id:
        return by_id[wanted]
    active = [r for r in runs if r.is_active()]
    return active[0] if active else newest(runs)


def render(run: Run | None) -> None:
    if run is None:
        st.info("No runs yet: set up the run above and launch it.")
        return
    status = run.status()
    run_state, phase = status.get("state"), status.get("phase")
    st.subheader(f"Run {run.id}")
    for w in state.launch_warnings(run.id):
        st.caption(f"⚠️ {md(w)}")
    step, total = int(status.get("step") or 0), status.get("total_steps")
    metrics = run.metrics()
    if run_state in ACTIVE:
        elapsed = float(status.get("elapsed") or 0)
        eta = elapsed / step * (total - step) if step and total else None
        label = f"{phase}: step {step}/{total or '?'}" + (f" · ETA {eta:.0f} s" if eta is not None else "")
        st.progress(step / total if total else 0.0, text=label)
        if st.button("Stop", icon=":material/stop_circle:", key=f"stop-{run.id}"):
            run.request_stop()
            st.toast("Stop requested: the run ends after its current step and saves the adapter.")
    elif run_state == "done":
        st.success(f"Done: {step} steps. Results are on the Compare page.", icon=":material/check_circle:")
        st.page_link("pages/compare.py", label="Open Compare", icon=":material/compare_arrows:")
    elif run_state == "stopped":
        st.warning(status.get("message") or "Stopped.", icon=":material/stop_circle:")
    elif run_state == "failed":
        st.error(status.get("message") or "Failed.", icon="⚠️")
    learn = status.get("learning_blocks")
    if learn:
        st.caption(f"Adapters that can learn: blocks {learn[0]}–{learn[-1]} (a loss on layer "
                   f"{max(status.get('target_layers', [learn[-1]]))} cannot reach deeper blocks)."
                   + (f" Trainable parameters: {status['trainable_parameters']:,}."
                      if status.get("trainable_parameters") else ""))
    if not metrics.empty:
        log_y = st.toggle("Log-scale loss", key=f"log-{run.id}")
        c1, c2 = st.columns(2)
        with c1:
            plot(loss_figure(metrics, log_y), key=f"loss-{run.id}")
        with c2:
            plot(similarity_figure(metrics), key=f"sims-{run.id}")
        last = metrics.iloc[-1]
        st.caption(f"last step: loss {last['loss']:.4f} · lr {last['lr']:.2e} · grad norm {last['grad_norm']:.3g} · "
                   f"{last['step_time'] * 1000:.0f} ms/step")
    with st.expander("Log"):
        st.code(run.log_tail(30) or "(empty)", language=None)
    if run_state not in ACTIVE:
        st.caption("Not running. Launch a new run above, or pick any run on the Runs page.")


@st.fragment(run_every=1.0)
def live() -> None:
    """Polls the run directory every second while the run is active."""
    run = run_to_watch()
    render(run)
    if run is None or not run.is_active():
        st.rerun()  # the whole page: switches to the static view, which does not poll


watched = run_to_watch()
if watched is not None and watched.is_active():
    live()
else:
    render(watched)
