"""The server-wide model cache, the session's word pairs, and cached layer scans."""

from __future__ import annotations

import gc
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import streamlit as st

from tli_core import workspace
from tli_core.alignment import scan
from tli_core.demo import DEMO
from tli_core.errors import TLIError
from tli_core.models import LoadedModel, ModelSpec, load_model
from tli_core.pairs import pairs_hash
from tli_core.runs import default_runs_dir

from . import state
from .text import md

SCAN_CACHE_SIZE = 24


# --------------------------------------------------------------------------- settings from the environment

def runs_dir() -> Path:
    return default_runs_dir()


def default_spec() -> ModelSpec:
    """The model the app starts on: the embedded demo in NF4 computing in bfloat16 (the paper's), unless the
    environment says otherwise (TLI_DEFAULT_MODEL, _QUANT, _DEVICE, _COMPUTE; a bad value is the load's error,
    shown where the model's progress would be)."""
    try:
        return ModelSpec(model=os.environ.get("TLI_DEFAULT_MODEL", DEMO),
                         quantization=os.environ.get("TLI_DEFAULT_QUANT", "nf4"),
                         device=os.environ.get("TLI_DEFAULT_DEVICE", "auto"),
                         compute_dtype=os.environ.get("TLI_DEFAULT_COMPUTE", "bfloat16"))
    except TLIError as exc:
        raise TLIError(f"the server's default model (TLI_DEFAULT_MODEL, _QUANT, _DEVICE, _COMPUTE): {exc}") from None


def autoload() -> bool:
    return os.environ.get("TLI_AUTOLOAD", "1") not in ("0", "false", "no")


# --------------------------------------------------------------------------- the model, once per server

def slow_seconds() -> float:
    """TLI_SLOW_SECONDS: a delay injected before a model load and into every poll (tests reproduce a slow server)."""
    try:
        return max(0.0, float(os.environ.get("TLI_SLOW_SECONDS", "0")))
    except ValueError:
        return 0.0


def slow_poll() -> None:
    """Where a page polls: as slow as TLI_SLOW_SECONDS says (0 unless a test reproduces a slow server)."""
    if slow_seconds():
        time.sleep(slow_seconds())


@dataclass
class Loading:
    """A model load running in a background thread: what pages show while it runs, and its end."""
    spec: ModelSpec
    phase: str = "starting"
    fraction: float = 0.0
    started: float = field(default_factory=time.monotonic)
    error: Exception | None = None
    finished: threading.Event = field(default_factory=threading.Event)

    def line(self) -> str:
        return (f"Loading {self.spec.label()} in the background (once per server; every page and tab shares it): "
                f"{self.phase} — {time.monotonic() - self.started:.0f} s so far")


@st.cache_resource
def _registry() -> dict:
    """Server-wide: loaded models by spec, loads in progress, shared by every session, each model loaded once."""
    return {"models": {}, "loading": {}, "lock": threading.Lock(), "load_lock": threading.Lock(),
            "autoload": threading.Event()}


def spec_key(spec: ModelSpec) -> str:
    return repr(sorted(spec.to_dict().items()))


def loaded_models() -> dict[str, LoadedModel]:
    return _registry()["models"]


def current_model() -> LoadedModel | None:
    """The session's model (the last one it loaded), or any model the server has loaded. Never waits."""
    models = loaded_models()
    key = state.model_key()
    if key in models:
        return models[key]
    if models:
        key = next(iter(models))
        state.set_model_key(key)
        return models[key]
    return None


def current_loading() -> Loading | None:
    """The load this session waits for: its own, else any the server runs (a failed one until it is retried)."""
    loading = _registry()["loading"]
    return loading.get(state.model_key()) or next(iter(loading.values()), None)


def _load(reg: dict, key: str, job: Loading) -> None:
    def report(phase: str, done: float, total: float | None, detail: str = "") -> None:
        job.phase, job.fraction = detail or phase, min(max(done / (total or 100), 0.0), 1.0)

    try:
        if slow_seconds():
            job.phase = "waiting (TLI_SLOW_SECONDS)"
            time.sleep(slow_seconds())
        with reg["load_lock"]:  # one load at a time: two at once would hold two models' memory mid-load
            lm = load_model(job.spec, progress=report)
        with reg["lock"]:
            reg["models"][key] = lm
            reg["loading"].pop(key, None)
    except Exception as exc:  # kept for the pages to show; a new start retries
        job.error = exc
    finally:
        job.finished.set()


def start_loading(spec: ModelSpec) -> Loading | None:
    """Load ``spec`` in a background thread unless the server holds it (None) or loads it already (that load)."""
    reg = _registry()
    key = spec_key(spec)
    with reg["lock"]:
        if key in reg["models"]:
            return None
        job = reg["loading"].get(key)
        if job is not None and job.error is None:
            return job
        job = reg["loading"][key] = Loading(spec)
    threading.Thread(target=_load, args=(reg, key, job), name="tli-model-load", daemon=True).start()
    return job


def start_autoload() -> None:
    """The default model, loaded in the background once per server (an unloaded model stays unloaded)."""
    reg = _registry()
    if autoload() and not reg["autoload"].is_set():
        reg["autoload"].set()
        if not reg["models"]:
            try:
                spec = default_spec()
            except TLIError as exc:  # shown where the load's progress would be, with a pointer to the Model page
                job = Loading(ModelSpec())
                job.error = exc
                job.finished.set()
                reg["loading"][spec_key(job.spec)] = job
                return
            start_loading(spec)


def ensure_model(spec: ModelSpec, container=None) -> LoadedModel:
    """Load ``spec`` (in the background thread) with a progress bar here, unless the server already holds it.
    Leaving the page leaves the load running."""
    reg = _registry()
    key = spec_key(spec)
    job = start_loading(spec)
    if job is not None:

        bar = (container or st).progress(0.0, text=md(job.line()))
        while not job.finished.wait(0.5):
            bar.progress(job.fraction, text=md(job.line()))
        bar.empty()
        if job.error is not None:
            with reg["lock"]:
                if reg["loading"].get(key) is job:
                    reg["loading"].pop(key)
            raise job.error
    state.set_model_key(key)
    return reg["models"][key]


def unload_model(key: str) -> None:
    """Free the model (no page loads it again by itself: the Model page does, when asked)."""
    reg = _registry()
    reg["autoload"].set()
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
    if state.model_key() == key:
        state.set_model_key(None)


@st.fragment(run_every=2.0)
def loading_line() -> None:
    """The load's progress, redrawn every 2 s; the whole page runs again when the model is there."""

    slow_poll()
    job = current_loading()
    if job is None or (job.finished.is_set() and job.error is None):
        st.rerun(scope="app")
    if job.error is not None:
        st.error(md(f"Loading {job.spec.label()} failed: {job.error}"), icon="⚠️")
        st.page_link("pages/model.py", label="Choose a model on the Model page", icon="🧠")
        return
    st.progress(job.fraction, text=md(job.line()))


def model_or_progress(needed_for: str = "") -> LoadedModel | None:
    """The loaded model; else the progress of its load (redrawn every 2 s), or a pointer to the Model page."""
    lm = current_model()
    if lm is None:
        if current_loading() is not None:
            loading_line()
        else:
            st.info("No model is loaded yet" + (f": {needed_for} needs one." if needed_for else "."))
            st.page_link("pages/model.py", label="Load a model on the Model page", icon="🧠")
    return lm


def require_model() -> LoadedModel:
    """The loaded model, else the progress of its load or a pointer to the Model page (and the page stops)."""
    lm = model_or_progress()
    if lm is None:
        st.stop()
    return lm


# --------------------------------------------------------------------------- word pairs of this session

ROLES = ("trained", "control")


def get_pairs() -> dict[str, pd.DataFrame]:
    """The session's trained and control sets: the ones this browser chose (kept on disk, so a reload or a server
    restart brings them back), else the ones chosen last on this server, else the shipped defaults."""
    if state.pairs_state() is None:
        chosen = state.persisted("sets") or workspace.last_sets()
        sets, metas = {}, {}
        for role in ROLES:
            try:
                sets[role], metas[role] = workspace.load_pairset(chosen.get(role, ""))
            except TLIError:
                meta = workspace.default_pairsets()[role]
                sets[role], metas[role] = workspace.load_pairset(meta.hash)
        state.set_pairs_state(sets, metas, {role: metas[role].report for role in ROLES})
        state.persist("sets", {role: metas[role].hash for role in ROLES})
    return state.pairs_state()[0]


def pair_sources() -> dict[str, workspace.PairSet]:
    """role -> the set's record: its file name, short hash (``.label``), rows, upload time."""
    get_pairs()
    return state.pairs_state()[1]


def pair_reports() -> dict[str, list[str]]:
    get_pairs()
    return state.pairs_state()[2]


def pair_names() -> dict[str, str]:
    return {role: meta.label for role, meta in pair_sources().items()}


def set_pairs(which: str, df: pd.DataFrame, name: str, report_lines: list[str] | None = None) -> None:
    """Make ``df`` the session's ``which`` set; it is kept in the workspace under its content hash."""
    get_pairs()
    meta = workspace.save_pairs(df, name, which, report_lines)
    sets, metas, reports = state.pairs_state()
    sets[which], metas[which], reports[which] = df, meta, meta.report
    hashes = {role: metas[role].hash for role in ROLES}
    state.persist("sets", hashes)
    workspace.remember_sets(hashes["trained"], hashes["control"])


def use_saved_pairs(which: str, h: str) -> None:
    df, meta = workspace.load_pairset(h)
    set_pairs(which, df, meta.name, meta.report)


def frame_hash(df: pd.DataFrame) -> str:
    return pairs_hash(df)


def pairs_file(df: pd.DataFrame) -> str:
    """The workspace file of a pair set (content-addressed), so a run's config.json points at real data."""
    h = pairs_hash(df)
    if workspace.get_pairset(h) is None:
        workspace.save_pairs(df, f"{h[:8]}.csv")
    return str(workspace.pairset_path(h))


# --------------------------------------------------------------------------- scans, cached by model, pairs, settings

@st.cache_resource
def _scan_cache() -> OrderedDict:
    return OrderedDict()


def cached_scan(lm: LoadedModel, sets: dict[str, pd.DataFrame], pooling: str, centering: str, seed: int = 0,
                precision: str = "float32", progress=None, compute: bool = True):
    """The scan for this model, these pairs and these settings: computed once, then reused."""
    key = (spec_key(lm.spec), tuple((n, frame_hash(df)) for n, df in sets.items()), pooling, centering, seed,
           precision)
    cache = _scan_cache()
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    if not compute:
        return None
    kwargs = {"progress": progress} if progress else {}
    result = scan(lm.model, lm.tokenizer, sets, pooling=pooling, centering=centering, seed=seed, precision=precision,
                  **kwargs)
    cache[key] = result
    while len(cache) > SCAN_CACHE_SIZE:
        cache.popitem(last=False)
    return result
