"""The session's state, behind small accessors: pages never share raw ``st.session_state`` keys."""

from __future__ import annotations

from typing import Any

import streamlit as st

_MODEL = "model_key"
_PAIRS = "pairs"
_SOURCES = "pairs_source"
_REPORTS = "pairs_report"
_UPLOADED = "uploaded"
_SCAN_SUGGESTION = "scan_suggestion"
_WATCHED_RUN = "watch_run"
_LAUNCH_WARNINGS = "launch_warnings"
_WATCHED_SWEEP = "watch_sweep"
_AUTOLOAD_TRIED = "autoload_tried"
_RESULTS = "page_results"


def model_key() -> str | None:
    return st.session_state.get(_MODEL)


def set_model_key(key: str | None) -> None:
    if key is None:
        st.session_state.pop(_MODEL, None)
    else:
        st.session_state[_MODEL] = key


def autoload_tried() -> bool:
    """True from the second call on: the default model is tried once per session."""
    tried = st.session_state.get(_AUTOLOAD_TRIED, False)
    st.session_state[_AUTOLOAD_TRIED] = True
    return tried


def pairs_state() -> tuple[dict, dict, dict] | None:
    """(sets, sources, reports) of this session, or None before the first call of ``set_pairs_state``."""
    if _PAIRS not in st.session_state:
        return None
    return st.session_state[_PAIRS], st.session_state[_SOURCES], st.session_state[_REPORTS]


def set_pairs_state(sets: dict, sources: dict, reports: dict) -> None:
    st.session_state[_PAIRS], st.session_state[_SOURCES], st.session_state[_REPORTS] = sets, sources, reports


def uploaded_marker(which: str) -> Any:
    return st.session_state.get(f"{_UPLOADED}-{which}")


def set_uploaded_marker(which: str, marker: Any) -> None:
    if marker is None:
        st.session_state.pop(f"{_UPLOADED}-{which}", None)
    else:
        st.session_state[f"{_UPLOADED}-{which}"] = marker


def scan_suggestion() -> dict | None:
    return st.session_state.get(_SCAN_SUGGESTION)


def set_scan_suggestion(suggestion: dict) -> None:
    st.session_state[_SCAN_SUGGESTION] = suggestion


def watched_run() -> str | None:
    return st.session_state.get(_WATCHED_RUN)


def set_watched_run(run_id: str, warnings: list[str] | None = None) -> None:
    st.session_state[_WATCHED_RUN] = run_id
    if warnings is not None:
        st.session_state[_LAUNCH_WARNINGS] = warnings


def launch_warnings(run_id: str) -> list[str]:
    return st.session_state.get(_LAUNCH_WARNINGS, []) if watched_run() == run_id else []


def watched_sweep() -> str | None:
    return st.session_state.get(_WATCHED_SWEEP)


def set_watched_sweep(sweep_id: str) -> None:
    st.session_state[_WATCHED_SWEEP] = sweep_id


def results(page: str) -> dict:
    """A page's own store of computed results (diagnostics, maps, probes), kept for the session."""
    return st.session_state.setdefault(f"{_RESULTS}-{page}", {})
