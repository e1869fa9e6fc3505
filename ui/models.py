"""The server-wide model cache, the session's word pairs, and cached layer scans."""

from __future__ import annotations

import gc
import os
import threading
from collections import OrderedDict
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
    key = state.model_key()
    if key in models:
        return models[key]
    if models:
        key = next(iter(models))
        state.set_model_key(key)
        return models[key]
    return None


def ensure_model(spec: ModelSpec, container=None) -> LoadedModel:
    """Load ``spec`` with a progress bar unless the server already holds it."""
    reg = _registry()
    key = spec_key(spec)
    if key not in reg["models"]:
        area = container or st
        bar = area.progress(0.0, text=f"Loading {spec.label()} (once per server; every page and tab shares it) …")

        def report(phase: str, done: float, total: float | None, detail: str = "") -> None:
            bar.progress(min(done / (total or 100), 1.0), text=detail or phase)

        try:
            with reg["lock"]:
                if key not in reg["models"]:
                    reg["models"][key] = load_model(spec, progress=report)
        finally:
            bar.empty()
    state.set_model_key(key)
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
    if state.model_key() == key:
        state.set_model_key(None)


def require_model() -> LoadedModel:
    """The loaded model, or a pointer to the Model page (and the page stops)."""
    lm = current_model()
    if lm is None:
        st.info("No model is loaded yet.")
        st.page_link("pages/model.py", label="Load a model on the Model page", icon="🧠")
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
