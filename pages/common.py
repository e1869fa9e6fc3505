"""What every page shares: the server-wide model cache, the session's word pairs, cached scans,
the sidebar, and small display helpers. All computation is in tli_core."""

from __future__ import annotations

import gc
import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path

import pandas as pd
import streamlit as st

from tli_core import TLIError
from tli_core.figures import PLOT_CONFIG
from tli_core.models import DEMO, LoadedModel, ModelSpec, load_model
from tli_core.pairs import DEFAULT_CONTROL, DEFAULT_TRAINED, read_pairs
from tli_core.runs import default_runs_dir

SCAN_CACHE_SIZE = 24


# --------------------------------------------------------------------------- settings from the environment

def runs_dir() -> Path:
    return default_runs_dir()


def default_spec() -> ModelSpec:
    """The model the app starts on: the embedded demo in NF4, unless the environment says otherwise."""
    return ModelSpec(model=os.environ.get("TLI_DEFAULT_MODEL", DEMO),
                     quantization=os.environ.get("TLI_DEFAULT_QUANT", "nf4"),
                     device=os.environ.get("TLI_DEFAULT_DEVICE", "auto"))


def autoload() -> bool:
    return os.environ.get("TLI_AUTOLOAD", "1") not in ("0", "false", "no")


# --------------------------------------------------------------------------- the model, once per server

@st.cache_resource
def _registry() -> dict:
    """Server-wide: loaded models by spec, shared by every session, loaded once."""
    return {"models": {}, "lock": threading.Lock()}


def spec_key(spec: ModelSpec) -> str:
    return repr(sorted(spec.to_dict().items()))


def loaded_models() -> dict[str, LoadedModel]:
    return _registry()["models"]


def current_model() -> LoadedModel | None:
    """The session's model (the last one it loaded), or any model the server has loaded."""
    models = loaded_models()
    key = st.session_state.get("model_key")
    if key in models:
        return models[key]
    if models:
        key = next(iter(models))
        st.session_state["model_key"] = key
        return models[key]
    return None


def ensure_model(spec: ModelSpec, container=None) -> LoadedModel:
    """Load ``spec`` with a progress bar unless the server already holds it."""
    reg = _registry()
    key = spec_key(spec)
    if key not in reg["models"]:
        area = container or st
        bar = area.progress(0.0, text=f"Loading {spec.label()} (once per server; every page and tab shares it) …")
        try:
            with reg["lock"]:
                if key not in reg["models"]:
                    reg["models"][key] = load_model(spec, progress=lambda f, m: bar.progress(min(f, 1.0), text=m))
        finally:
            bar.empty()
    st.session_state["model_key"] = key
    return reg["models"][key]


def unload_model(key: str) -> None:
    reg = _registry()
    with reg["lock"]:
        reg["models"].pop(key, None)
    _scan_cache().clear()
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
    if st.session_state.get("model_key") == key:
        del st.session_state["model_key"]


def require_model() -> LoadedModel:
    """The loaded model, or a pointer to the Model page (and the page stops)."""
    lm = current_model()
    if lm is None:
        st.info("No model is loaded yet.")
        st.page_link("pages/model.py", label="Load a model on the Model page", icon="🧠")
        st.stop()
    return lm


# --------------------------------------------------------------------------- word pairs of this session

def get_pairs() -> dict[str, pd.DataFrame]:
    """The session's trained and control sets (the shipped defaults until the user uploads others)."""
    if "pairs" not in st.session_state:
        trained, t_report = read_pairs(DEFAULT_TRAINED)
        control, c_report = read_pairs(DEFAULT_CONTROL)
        st.session_state["pairs"] = {"trained": trained, "control": control}
        st.session_state["pairs_source"] = {"trained": "default (assets/pairs_trained.csv)",
                                            "control": "default (assets/pairs_control.csv)"}
        st.session_state["pairs_report"] = {"trained": t_report, "control": c_report}
    return st.session_state["pairs"]


def set_pairs(which: str, df: pd.DataFrame, source: str, report) -> None:
    get_pairs()
    st.session_state["pairs"][which] = df
    st.session_state["pairs_source"][which] = source
    st.session_state["pairs_report"][which] = report


def frame_hash(df: pd.DataFrame) -> str:
    return hashlib.sha1(df[["swahili", "english"]].to_csv(index=False).encode()).hexdigest()[:16]


def pairs_file(df: pd.DataFrame) -> str:
    """A stable file for a pair set (content-addressed), so a run's config.json points at real data."""
    from tli_core.files import write_csv

    path = runs_dir() / ".pairs" / f"{frame_hash(df)}.csv"
    if not path.is_file():
        write_csv(path, df)
    return str(path)


# --------------------------------------------------------------------------- scans, cached by model, pairs, settings

@st.cache_resource
def _scan_cache() -> OrderedDict:
    return OrderedDict()


def cached_scan(lm: LoadedModel, sets: dict[str, pd.DataFrame], pooling: str, centering: str, seed: int = 0,
                progress=None, compute: bool = True):
    """The scan for this model, these pairs and these settings: computed once, then reused."""
    from tli_core.alignment import scan

    key = (spec_key(lm.spec), tuple((n, frame_hash(df)) for n, df in sets.items()), pooling, centering, seed)
    cache = _scan_cache()
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    if not compute:
        return None
    result = scan(lm.model, lm.tokenizer, sets, pooling=pooling, centering=centering, seed=seed, progress=progress)
    cache[key] = result
    while len(cache) > SCAN_CACHE_SIZE:
        cache.popitem(last=False)
    return result


# --------------------------------------------------------------------------- display helpers

def plot(fig, key: str | None = None) -> None:
    """A Plotly figure with its PNG download button (camera icon) in the mode bar."""
    config = dict(PLOT_CONFIG)
    if key:
        config["toImageButtonOptions"] = dict(PLOT_CONFIG["toImageButtonOptions"], filename=f"tli-{key}")
    st.plotly_chart(fig, key=key, config=config)


def download_csv(df: pd.DataFrame, filename: str, label: str = "Download CSV", key: str | None = None) -> None:
    st.download_button(label, df.to_csv(index=False).encode("utf-8"), file_name=filename, mime="text/csv",
                       key=key or f"dl-{filename}", icon=":material/download:")


def show_error(exc: Exception) -> None:
    if isinstance(exc, TLIError):
        st.error(str(exc), icon="⚠️")
    else:
        st.exception(exc)


def searchable(df: pd.DataFrame, key: str, columns=("swahili", "english"), label="Search words") -> pd.DataFrame:
    query = st.text_input(label, key=key, placeholder="type part of a Swahili or English word")
    if not query:
        return df
    if not any(c in df for c in columns):  # an imported table: search every text column
        columns = [c for c in df.columns if df[c].dtype == object or pd.api.types.is_string_dtype(df[c])]
    mask = pd.Series(False, index=df.index)
    for col in columns:
        if col in df:
            mask = mask | df[col].astype(str).str.contains(query, case=False, regex=False)
    return df[mask]


# --------------------------------------------------------------------------- sidebar (every page)

def sidebar() -> None:
    from tli_core.runs import active_runs

    with st.sidebar:
        st.markdown("### Loaded model")
        lm = current_model()
        if lm is None:
            st.caption("none — load one on the Model page")
        else:
            f = lm.facts
            st.markdown(f"**{f.name}**")
            st.caption(f"{f.architecture} · {f.num_layers} blocks (layers 0–{f.num_layers}) · hidden {f.hidden_size}\n\n"
                       f"{f.quantization} · {f.device} · {f.memory_bytes / 2**20:,.0f} MiB")
        pairs = st.session_state.get("pairs")
        if pairs:
            st.markdown("### Word pairs")
            st.caption(f"trained {len(pairs['trained'])} · control {len(pairs['control'])}")
        try:
            active = active_runs(runs_dir())
        except OSError:
            active = []
        if active:
            st.markdown("### Training")
            st_ = active[0].status()
            st.caption(f"{active[0].id}: {st_.get('phase')} — step {st_.get('step', 0)}/{st_.get('total_steps') or '?'}")
        st.caption("Layers: 0 = input embeddings, k = output of decoder block k, L = final output.")


# --------------------------------------------------------------------------- re-evaluating a saved adapter

def evaluation_panel(run, key: str) -> None:
    """State of a run's re-evaluation, or a button that starts one in the background.

    One job at a time per runs directory (the evaluator takes the training lock); a started
    evaluation shows as running from the first instant, so a second click cannot start another.
    """
    from tli_core.runs import busy_message, launch

    ev = run.evaluation()
    if ev.get("state") == "running":
        st.info(f"Evaluating the saved adapter: {ev.get('phase', 'starting')} (started {ev.get('started', 'now')}). "
                f"This page updates when it is done.", icon=":material/hourglass_top:")
        _poll_evaluation(run)
        return
    if ev.get("state") == "failed":
        st.error(f"The last evaluation failed: {ev.get('message')}")
    busy = busy_message(run.path.parent)
    if busy:
        st.caption(f"Evaluation waits: {busy}.")
    label = "Evaluate again" if ev.get("state") == "failed" else "Evaluate this run"
    if st.button(label, type="primary", key=key, disabled=bool(busy), icon=":material/analytics:"):
        launch(run, command="evaluate-worker")
        st.toast("Evaluation started in the background.")
        st.rerun()


@st.fragment(run_every=2.0)
def _poll_evaluation(run) -> None:
    if not run.is_evaluating():
        st.rerun(scope="app")


# --------------------------------------------------------------------------- the app.py frame

FRAMED = "_tli_framed"
DEEP_LINK = "_tli_deep_link"


def framed(page_file: str) -> None:
    """Make sure this page runs inside app.py's navigation and sidebar.

    Streamlit treats a ``pages/`` folder next to the entry point as a legacy multipage app
    until app.py has called ``st.navigation`` once in the server's life. A bookmarked or
    refreshed deep link (``/train``) opened first on a fresh server would run the page alone,
    with no model sidebar and a file-name menu. Such a page hands over to app.py, which opens
    the same page inside the frame.
    """
    if st.session_state.get(FRAMED):
        return
    st.session_state[DEEP_LINK] = os.path.relpath(page_file, os.path.dirname(os.path.dirname(__file__)))
    st.switch_page("app.py")
