"""The session's state, behind small accessors: pages never share raw ``st.session_state`` keys."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from tli_core import workspace

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


def shown_protocol(run_id: str) -> str | None:
    """The protocol Compare showed last for this run in this session (None: first view, e.g. from a link)."""
    return st.session_state.get(f"shown-protocol-{run_id}")


def set_shown_protocol(run_id: str, protocol: str) -> None:
    st.session_state[f"shown-protocol-{run_id}"] = protocol


def results(page: str) -> dict:
    """A page's own store of computed results (diagnostics, maps, probes), kept for the session."""
    return st.session_state.setdefault(f"{_RESULTS}-{page}", {})


# --------------------------------------------------------------------------- what survives a reload

_SID = "session_id"
_PERSIST = "persisted"


def session_id() -> str:
    """This browser session's id: from the URL (?s=...) after a reload, else a new one. Its state is on disk."""
    if _SID not in st.session_state:
        sid = st.query_params.get("s")
        if not workspace.valid_session_id(sid):
            sid = workspace.new_session_id()
        st.session_state[_SID] = sid
        st.session_state[_PERSIST] = workspace.read_session(sid)
    return st.session_state[_SID]


def keep_session_in_url() -> None:
    """Called by app.py on every run: the id stays in the URL whatever page the user opens."""
    sid = session_id()
    if st.query_params.get("s") != sid:
        st.query_params["s"] = sid


def persisted(key: str, default: Any = None) -> Any:
    session_id()
    return st.session_state[_PERSIST].get(key, default)


def persist(key: str, value: Any) -> None:
    """Remember ``value`` for this browser session, on disk (a reload or a server restart keeps it)."""
    sid = session_id()
    data = st.session_state[_PERSIST]
    if data.get(key) != value:
        data[key] = value
        workspace.write_session(sid, data)


# --------------------------------------------------------------------------- forms whose values survive a reload

def form_key(form: str, field: str) -> str:
    return f"{form}-{field}"


def _from_link(text: str, default: Any) -> Any:
    """A query-parameter value in the type of the field's default (None when it cannot be one)."""
    try:
        if isinstance(default, bool):
            return {"1": True, "true": True, "0": False, "false": False}.get(text.lower())
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, list):
            items = [t.strip() for t in text.split(",") if t.strip()]
            return [int(t) for t in items] if default and isinstance(default[0], int) else items
        return text
    except ValueError:
        return None


def checks(**tests) -> Callable[[str, Any], bool]:
    """``fits`` for :func:`init_form` from one test per field (fields without one take any value of their type)."""
    return lambda field, value: tests.get(field, lambda _: True)(value)


def init_form(form: str, defaults: dict, fits=None, link: tuple[str, ...] = ()) -> None:
    """Give each field of ``form`` its value before the widgets are drawn: this session's last value, else the
    page link's (``link`` names the fields a URL may set, e.g. ``?layer=11``), else the draft kept on disk (a
    reload), else the default. ``fits(field, value)`` drops values a widget cannot take."""
    draft = persisted(f"form-{form}") or {}
    for field, default in defaults.items():
        k = form_key(form, field)
        if k in st.session_state:
            continue
        value = draft.get(field, default)
        if field in link and field in st.query_params:
            linked = _from_link(st.query_params[field], default)
            value = value if linked is None else linked
        if type(value) is not type(default) and not (isinstance(default, float) and isinstance(value, int)):
            value = default
        if fits is not None and not fits(field, value):
            value = default
        st.session_state[k] = value


def form_value(form: str, field: str) -> Any:
    return st.session_state.get(form_key(form, field))


def set_form_value(form: str, field: str, value: Any) -> None:
    """Only before the field's widget is drawn in this run (a button above the form, then a rerun)."""
    st.session_state[form_key(form, field)] = value


def reset_form(form: str, defaults: dict) -> None:
    for field, default in defaults.items():
        st.session_state[form_key(form, field)] = default


def save_form(form: str, defaults: dict, link: tuple[str, ...] = ()) -> None:
    """Keep what the user typed (called after the widgets are drawn); the ``link`` fields also go into the URL."""
    values = {field: st.session_state.get(form_key(form, field), default) for field, default in defaults.items()}
    persist(f"form-{form}", values)
    for field in link:
        value = values[field]
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value).lower() \
            if isinstance(value, bool) else str(value)
        if st.query_params.get(field) != text:
            st.query_params[field] = text


def scan_seconds_per_word(spec) -> float | None:
    """What the last layer scan of this model measured, for duration estimates before the first run."""
    sugg = scan_suggestion()
    return sugg.get("seconds_per_word") if sugg and sugg.get("model") == spec else None
