"""Train: every TLIConfig setting (defaults = the paper), launch a worker process, watch it live.

No form: each setting is a widget of its own, so warnings and the duration estimate follow what
is typed, Enter never launches anything, and the values are kept for this browser session (a
reload brings them back). The paper's values stay the defaults; a scan's suggestion is a
button, never a silent change.
"""

import streamlit as st

from tli_core.config import LOSSES, METHODS, PLACEMENTS, TLIConfig, resolve, total_steps
from tli_core.embeddings import POOLINGS
from tli_core.errors import TLIError
from tli_core.estimate import calibrate, estimate_run, progress_text
from tli_core.figures import loss_figure, similarity_figure
from tli_core.jobs.jobdir import ACTIVE
from tli_core.jobs.runner import start_replicates, start_run
from tli_core.layers import layer_name, paper_eval_layer
from tli_core.precision import PRECISIONS
from tli_core.protocols import EVAL_LAYERS, PROTOCOLS
from tli_core.runs import Run, list_runs, newest
from tli_core.sweeps import Sweep, list_sweeps
from tli_core.util import parse_seeds
from ui import state
from ui.grid import sweep_progress
from ui.models import get_pairs, pair_names, pairs_file, require_model, runs_dir, slow_poll
from ui.widgets import evaluation_panel, hide_script_stop, md, plot, show_error

OVERLAP_CONTROL = "Accept pairs that are in both sets"

st.title("Train")
hide_script_stop()  # a job page: the job's Stop is the only Stop
lm = require_model()
pairs = get_pairs()
names = pair_names()
n = lm.facts.num_layers
helps = TLIConfig.help()
paper = TLIConfig()


def layer_label(k) -> str:
    if isinstance(k, str):
        return {"paper": f"paper — L-1 = {paper_eval_layer(n)}", "target": "target — the training layer",
                "last": f"last — {n}"}[k]
    return f"{k} — {layer_name(k, n)}"


# The form's fields: widget key -> the paper's value (what a fresh form and "Reset" show)
PAPER_FORM = {
    "targets": [min(paper.target_layers[0], n)], "pooling": paper.pooling, "protocols": list(paper.protocols),
    "eval_layer": paper.eval_layer, "eval_pooling": paper.eval_pooling, "precision": paper.analysis_precision,
    "method": paper.method, "rank": paper.lora_r, "alpha": paper.lora_alpha, "dropout": paper.lora_dropout,
    "modules": ",".join(lm.facts.lora_targets), "placement": paper.adapter_blocks, "custom": "1-2",
    "loss": paper.loss, "margin": paper.margin, "temperature": paper.temperature, "lr": paper.learning_rate,
    "epochs": paper.epochs, "batch": paper.batch_size, "warmup": paper.warmup_steps, "seed": paper.seed,
    "wd": paper.weight_decay, "clip": float(paper.grad_clip or 0.0), "sub_t": 0, "sub_c": 0,
    "early": paper.early_exit, "overlap": False, "name": "", "notes": "", "more_seeds": "", "placebo": False,
}
def fits(field: str, value) -> bool:
    """A kept value the widgets of this model can still show."""
    if field == "targets":
        return bool(value) and all(isinstance(k, int) and 1 <= k <= n for k in value)
    if field == "eval_layer":
        return value in EVAL_LAYERS or (isinstance(value, int) and 0 <= value <= n)
    if field == "protocols":
        return all(p in PROTOCOLS for p in value)
    options = {"method": METHODS, "pooling": POOLINGS, "eval_pooling": POOLINGS, "precision": PRECISIONS,
               "loss": LOSSES, "placement": list(PLACEMENTS) + ["custom"]}
    return field not in options or value in options[field]


state.init_form("train", PAPER_FORM, fits)


def layer_choice(targets: list[int]) -> str:
    """'scan' / 'scan-held-out' when the target is the layer this session's scan suggested, else 'given'."""
    s = state.scan_suggestion(lm.spec)
    if s and targets == [s.get("gap_peak")]:
        return s.get("mode") or "scan"
    return "given"

# ---------------------------------------------------------------- header: what this run will use
st.markdown(f"**Model:** {md(lm.spec.label())}  \n**Trained pairs:** {len(pairs['trained'])} from "
            f"{md(names['trained'])} · **control pairs:** {len(pairs['control'])} from {md(names['control'])} "
            f"(choose them on the Word pairs page)")
st.caption("The defaults are the paper's published settings (where the paper is silent, the authors' code: no "
           "gradient clipping). Changing a value never changes another one behind your back.")
b1, b2 = st.columns([3, 1])
sugg = state.scan_suggestion(lm.spec)
if sugg and 0 < sugg["gap_peak"] <= n:
    gap = sugg["gap_peak"]
    how = "chosen on a held-out half of the headwords" if sugg.get("mode") == "scan-held-out" else \
        "chosen on the same pairs: evaluating it there is double-dipping"
    if state.form_value("train", "targets") != [gap] and b1.button(
            f"Use layer {gap} (largest gap over shuffled pairs in your scan, {how}) instead of the paper's layer "
            f"{PAPER_FORM['targets'][0]}", icon=":material/swap_horiz:"):
        state.set_form_value("train", "targets", [gap])
        st.rerun()
else:
    b1.caption("Run the Layer scan to see which layer separates translations from shuffled pairs best.")
if b2.button("Reset to the paper's settings", icon=":material/restart_alt:"):
    state.reset_form("train", PAPER_FORM)
    st.rerun()

running = [r for r in list_runs(runs_dir()) if r.is_active()]
form_col, job_col = st.columns([3, 1])  # the same layout with or without a job: nothing jumps when one starts


def field(name: str, options=None) -> dict:
    return state.field("train", name, options)


with form_col:
    st.markdown("##### Where")
    c1, c2 = st.columns(2)
    targets = c1.multiselect("Target layer(s)", list(range(1, n + 1)), format_func=layer_label, **field("targets"),
                             help=helps["target_layers"])
    pooling = c2.selectbox("Training pooling", list(POOLINGS), **field("pooling", list(POOLINGS)),
                           help=helps["pooling"])
    st.caption(f"Training pooling **{pooling}**: {POOLINGS[pooling]}.")  # the select shows its value whole
    st.markdown("##### Evaluation")
    c1, c2, c3, c4 = st.columns(4)
    protocols = c1.multiselect("Protocols (first = headline)", list(PROTOCOLS), **field("protocols"),
                               format_func=lambda p: f"{p} — {PROTOCOLS[p].title}", help=helps["protocols"])
    eval_layer = c2.selectbox("Studio protocol: evaluation layer", list(EVAL_LAYERS) + list(range(n + 1)),
                              format_func=layer_label, **field("eval_layer", list(EVAL_LAYERS) + list(range(n + 1))),
                              help=helps["eval_layer"])
    eval_pooling = c3.selectbox("Studio protocol: pooling", list(POOLINGS), **field("eval_pooling", list(POOLINGS)),
                                help=helps["eval_pooling"])
    precision = c4.selectbox("Analysis precision", list(PRECISIONS), **field("precision", list(PRECISIONS)),
                             help=helps["analysis_precision"])
    st.caption(f"Evaluation pooling **{eval_pooling}**: {POOLINGS[eval_pooling]}.")
    st.markdown("##### What trains")
    method = st.radio("Method", METHODS, **field("method", METHODS), horizontal=True, help=helps["method"],
                      format_func={"lora": "LoRA adapters (the paper)",
                                   "full": "full fine-tuning of the blocks (a baseline)"}.get)
    lora = method == "lora"
    c1, c2, c3, c4 = st.columns(4)
    rank = c1.number_input("LoRA rank r", 1, 1024, **field("rank"), help=helps["lora_r"], disabled=not lora)
    alpha = c2.number_input("LoRA alpha", 1, 4096, **field("alpha"), help=helps["lora_alpha"], disabled=not lora)
    dropout = c3.number_input("LoRA dropout", 0.0, 0.9, step=0.01, **field("dropout"), help=helps["lora_dropout"],
                              disabled=not lora)
    modules = c4.text_input("LoRA target modules", **field("modules"), help=helps["target_modules"],
                            disabled=not lora)
    c1, c2 = st.columns(2)
    placement = c1.selectbox("Adapter blocks" if lora else "Blocks that train", list(PLACEMENTS) + ["custom"],
                             **field("placement", list(PLACEMENTS) + ["custom"]), help=helps["adapter_blocks"])
    custom = c2.text_input("Custom blocks (for 'custom')", **field("custom"), help="blocks numbered 1..L, e.g. 1-4,8")
    st.markdown("##### Loss and optimiser")
    c1, c2, c3, c4 = st.columns(4)
    loss = c1.selectbox("Loss", LOSSES, **field("loss", LOSSES), help=helps["loss"])
    margin = c2.number_input("Triplet margin", 0.0, 2.0, step=0.05, **field("margin"), help=helps["margin"])
    temperature = c3.number_input("InfoNCE temperature", 0.001, 10.0, step=0.01, format="%.3f",
                                  **field("temperature"), help=helps["temperature"])
    lr = c4.number_input("Learning rate", 1e-7, 1.0, format="%.1e", **field("lr"), help=helps["learning_rate"])
    c1, c2, c3, c4 = st.columns(4)
    epochs = c1.number_input("Epochs", 1, 1000, **field("epochs"), help=helps["epochs"])
    batch = c2.number_input("Batch size", 2, 4096, **field("batch"), help=helps["batch_size"])
    warmup = c3.number_input("Warm-up steps", 0, 100000, **field("warmup"), help=helps["warmup_steps"])
    seed = c4.number_input("Seed", 0, 2**31 - 1, **field("seed"), help=helps["seed"])
    c1, c2, c3, c4 = st.columns(4)
    wd = c1.number_input("Weight decay", 0.0, 1.0, step=0.01, **field("wd"), help=helps["weight_decay"])
    clip = c2.number_input("Gradient clipping (0 = off)", 0.0, 1000.0, **field("clip"), help=helps["grad_clip"])
    sub_t = c3.number_input("Trained subset (0 = all)", 0, 10**6, **field("sub_t"), help=helps["trained_subset"])
    sub_c = c4.number_input("Control subset (0 = all)", 0, 10**6, **field("sub_c"), help=helps["control_subset"])
    c1, c2 = st.columns(2)
    early = c1.checkbox("Early exit after the deepest target layer", **field("early"), help=helps["early_exit"])
    overlap = c2.checkbox(OVERLAP_CONTROL, **field("overlap"), help=helps["allow_overlap"])
    st.markdown("##### Replicates and placebo")
    c1, c2 = st.columns(2)
    more_seeds = c1.text_input("More seeds (replicates)", **field("more_seeds"), placeholder="e.g. 1,2",
                               help="train the same settings once more per seed: the result is then judged against "
                                    "seed-to-seed variation (seeds as replicates), not only across words")
    placebo = c2.checkbox("Train a placebo per seed", **field("placebo"),
                          help="the same settings and seed on deranged pairs (each Swahili word paired with an English "
                               "word that is none of its translations); Compare then tests TLI − placebo")
    st.caption("A green arrow or a ★ on Compare needs an effect specific to translations, significant after "
               "correction, across two or more seeds and beyond the placebo. Seeds and the placebo run as a one-cell "
               "sweep on Ray (followed below and on the Sweeps page).")
    c1, c2 = st.columns([1, 2])
    name = c1.text_input("Run name (optional)", **field("name"), max_chars=100,
                         help="letters, digits, '.', '_' or '-'; default: time, model, layer and rank")
    notes = c2.text_input("Notes (optional)", **field("notes"), max_chars=2000,
                          help="kept with the run; editable later on the Runs page")
state.save_form("train", PAPER_FORM)

config, problem = None, None
try:
    config = TLIConfig(
        model=lm.spec, trained_pairs=pairs_file(pairs["trained"]), control_pairs=pairs_file(pairs["control"]),
        trained_subset=int(sub_t) or None, control_subset=int(sub_c) or None, target_layers=sorted(targets),
        protocols=protocols, eval_layer=eval_layer, eval_pooling=eval_pooling, analysis_precision=precision,
        pooling=pooling, method=method, lora_r=int(rank), lora_alpha=int(alpha), lora_dropout=float(dropout),
        target_modules=[m.strip() for m in modules.split(",") if m.strip()] or None,
        adapter_blocks=custom if placement == "custom" else placement, loss=loss, margin=float(margin),
        temperature=float(temperature), learning_rate=float(lr), warmup_steps=int(warmup), epochs=int(epochs),
        batch_size=int(batch), weight_decay=float(wd), grad_clip=float(clip) or None, seed=int(seed),
        early_exit=early, allow_overlap=overlap, layer_choice=layer_choice(sorted(targets)))
    _, warnings = resolve(config, lm.facts.shape(), len(pairs["trained"]), len(pairs["control"]))
except TLIError as exc:
    problem, warnings = exc, []

with form_col:
    for w in warnings:
        st.warning(md(w), icon=":material/info:")
    if problem is not None:
        show_error(problem)
    else:
        used = min(config.trained_subset or len(pairs["trained"]), len(pairs["trained"]))
        steps = total_steps(used, config.batch_size, config.epochs)
        scan_rate = state.scan_seconds_per_word(lm.spec)
        est = estimate_run(config, len(pairs["trained"]), len(pairs["control"]), runs_dir(), n, None,
                           load_seconds=lm.facts.load_seconds)
        if est is None and config.model == lm.spec:  # before the first run of this model here: measure, not guess
            try:
                with st.spinner("Measuring this model's speed on this machine (once, a few seconds) …"):
                    calibrate(lm, config, pairs["trained"], runs_dir())
            except Exception as exc:  # noqa: BLE001 -- an estimate is no reason to break the page: say it, go on
                st.caption(f"Could not measure this model's speed here: {md(str(exc))}")
            est = estimate_run(config, len(pairs["trained"]), len(pairs["control"]), runs_dir(), n, scan_rate,
                               load_seconds=lm.facts.load_seconds)
        if est is None:
            st.caption(f"{steps} training steps. No duration estimate yet: nothing has been measured for this model "
                       f"on this machine (the first run, or a layer scan, measures it).")
        else:
            st.caption(f"{steps} training steps; estimated duration **{est.total:.0f} s** ("
                       + ", ".join(f"{phase} {sec:.0f} s" for phase, sec in est.phases.items())
                       + f"; {est.basis}).")
    try:
        extra = parse_seeds(more_seeds) or []
    except TLIError as exc:
        extra = []
        show_error(exc)
    replicates = [int(seed)] + [x for x in extra if x != int(seed)]
    if st.button("Launch training" if len(replicates) == 1 and not placebo else
                 f"Launch {len(replicates) * (2 if placebo else 1)} runs (seeds {', '.join(map(str, replicates))}"
                 + (", each with its placebo)" if placebo else ")"),
                 type="primary", icon=":material/rocket_launch:", disabled=problem is not None):
        if len(replicates) > 1 or placebo:
            try:
                sweep = start_replicates(config, replicates, placebo, runs_dir(), trained=pairs["trained"],
                                         control=pairs["control"], pair_names=names, name=name.strip() or None)
                state.set_watched_sweep(sweep.id)
                state.set_form_value("sweeps", "pick", sweep.id)
                st.toast(f"Sweep {md(sweep.id)} launched: {len(sweep.cells())} runs", icon=":material/rocket_launch:")
                st.rerun()
            except Exception as exc:
                show_error(exc, overlap_control=OVERLAP_CONTROL)
            st.stop()
        try:
            run, _, launch_warnings = start_run(config, runs_dir(), trained=pairs["trained"],
                                                control=pairs["control"], name=name.strip() or None,
                                                pair_names=names)
            if notes.strip():
                run.set_meta(notes=notes.strip())
            state.set_watched_run(run.id, launch_warnings)
            state.set_watched_sweep("")  # this run is what the page follows now
            st.toast(f"Run {md(run.id)} launched", icon=":material/rocket_launch:")
            st.rerun()  # draw the page again: the running job's settings beside the form
        except Exception as exc:
            show_error(exc, overlap_control=OVERLAP_CONTROL)

with job_col:
    if not running:
        st.caption("No job is running. While one runs, its settings are shown here, beside the form for your "
                   "next run.")
    else:
        job = running[0]
        st.markdown(f"##### Running now: {md(job.id)}")
        cfg = job.config_dict()
        st.caption("The settings it runs with (the form on the left is your next run):")
        shown = {"target layers": cfg.get("target_layers"), "epochs": cfg.get("epochs"),
                 "method": "full fine-tuning" if cfg.get("method") == "full" else f"LoRA r={cfg.get('lora_r')}",
                 "learning rate": cfg.get("learning_rate"), "batch": cfg.get("batch_size"),
                 "warm-up": cfg.get("warmup_steps"), "protocols": ", ".join(cfg.get("protocols") or []),
                 "pairs": " / ".join(v.get("name", "") for v in (job.raw_status().get("pairs") or {}).values())}
        st.table({"setting": list(shown), "value": [md(v) for v in shown.values()]})


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
    run_state = status.get("state")
    st.subheader(f"Run {md(run.id)}" + (f" — {md(run.meta().get('name'))}" if run.meta().get("name") else ""))
    for w in state.launch_warnings(run.id):
        st.caption(f"⚠️ {md(w)}")
    step = int(status.get("step") or 0)
    try:
        metrics = run.metrics()
    except TLIError as exc:  # this run's damaged metrics: said where its curves would be
        show_error(exc)
        metrics = None
    if run_state in ACTIVE:
        try:
            cfg = run.config()
            sizes = {role: int(v.get("rows") or 0) for role, v in (status.get("pairs") or {}).items()}
            est = estimate_run(cfg, sizes.get("trained", 0), sizes.get("control", 0), runs_dir())
        except TLIError:
            est = None
        fraction, text = progress_text(status, est)
        st.progress(min(max(fraction, 0.0), 1.0), text=text)
        if st.button("Stop", icon=":material/stop_circle:", key=f"stop-{run.id}"):
            try:
                run.request_stop()
                st.toast("Stop requested: the run ends within seconds and keeps what it finished (the adapter, once "
                         "training has begun).")
            except TLIError as exc:
                show_error(exc)
    elif run_state == "done":
        st.success(f"Done: {step} steps. Results are on the Compare page.", icon=":material/check_circle:")
        st.page_link("pages/compare.py", label="Open Compare", icon=":material/compare_arrows:")
    elif run_state == "stopped":
        st.warning(md(status.get("message") or "Stopped."), icon=":material/stop_circle:")
        if run.has_weights() and run.summary() is None:
            evaluation_panel(run, key=f"evaluate-{run.id}")
    elif run_state in ("failed", "unreadable"):
        st.error(md(status.get("message") or "Failed."), icon="⚠️")
    learn = status.get("learning_blocks")
    if learn:
        st.caption(f"Adapters that can learn: blocks {learn[0]}–{learn[-1]} (a loss on layer "
                   f"{max(status.get('target_layers', [learn[-1]]))} cannot reach deeper blocks)."
                   + (f" Trainable parameters: {status['trainable_parameters']:,}."
                      if status.get("trainable_parameters") else ""))
    if metrics is not None and not metrics.empty:
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
    slow_poll()
    run = run_to_watch()
    if run is None or not run.is_active():
        # the whole page, before drawing the finished run here: its "Open Compare" link must come from the
        # static view, or a click on the fragment's copy is lost in the rerun that replaces it
        st.rerun()
    render(run)


def watched_sweep() -> Sweep | None:
    """The seeds/placebo sweep this session launched from here, while it is the newest thing it started."""
    wanted = state.watched_sweep()
    return next((s for s in list_sweeps(runs_dir()) if s.id == wanted), None) if wanted else None


@st.fragment(run_every=2.0)
def live_sweep(sweep_id: str) -> None:
    sweep = Sweep(runs_dir() / "sweeps" / sweep_id)
    st.subheader(f"Seeds and placebo: sweep {md(sweep.id)}")
    status = sweep_progress(sweep, f"train-{sweep.id}")
    if status.get("state") not in ("queued", "running"):
        st.rerun()


replicated_sweep = watched_sweep()
if replicated_sweep is not None:
    if replicated_sweep.status().get("state") in ("queued", "running"):
        live_sweep(replicated_sweep.id)
    else:
        st.subheader(f"Seeds and placebo: sweep {md(replicated_sweep.id)}")
        sweep_progress(replicated_sweep, f"train-{replicated_sweep.id}")
        st.page_link("pages/compare.py", label="Open Compare (each run shows its cell's seeds and placebo)",
                     icon=":material/compare_arrows:")
watched = run_to_watch()
if watched is not None and watched.is_active():
    live()
else:
    render(watched)
