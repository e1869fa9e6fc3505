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
_RESULTS = "page_results"


def model_key() -> str | None:
    return st.session_state.get(_MODEL)


def set_model_key(key: str | None) -> None:
    if key is None:
        st.session_state.pop(_MODEL, None)
    else:
        st.session_state[_MODEL] = key


def set_notice(page: str, text: str) -> None:
    """A message for the page's next run (e.g. after an action and ``st.rerun``)."""
    st.session_state[f"notice-{page}"] = text


def take_notice(page: str) -> str | None:
    return st.session_state.pop(f"notice-{page}", None)


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


def scan_suggestion(spec=None) -> dict | None:
    """What this browser session's last layer scan suggests (``model``, ``gap_peak``, ``mode``,
    ``seconds_per_word``), kept on disk like the forms: a reload, mid-run too, keeps the Train page's suggestion
    button and its duration estimate. With ``spec``: only a suggestion made on that model."""
    kept = persisted(_SCAN_SUGGESTION)
    if kept and spec is not None and kept.get("model") != spec.to_dict():
        return None
    return kept


def set_scan_suggestion(suggestion: dict, spec, seconds_per_word: float) -> None:
    persist(_SCAN_SUGGESTION, {"model": spec.to_dict(), "gap_peak": int(suggestion["gap_peak"]),
                               "mode": suggestion.get("mode"), "seconds_per_word": float(seconds_per_word)})


def watched_run() -> str | None:
    return persisted(_WATCHED_RUN)


def set_watched_run(run_id: str, warnings: list[str] | None = None) -> None:
    """The run the Train page follows, and the warnings its launch gave (kept on disk: a reload keeps them)."""
    persist(_WATCHED_RUN, run_id)
    if warnings is not None:
        persist(_LAUNCH_WARNINGS, {"run": run_id, "warnings": [str(w) for w in warnings]})


def launch_warnings(run_id: str) -> list[str]:
    kept = persisted(_LAUNCH_WARNINGS) or {}
    return list(kept.get("warnings") or []) if kept.get("run") == run_id else []


def watched_sweep() -> str | None:
    return persisted(_WATCHED_SWEEP)


def set_watched_sweep(sweep_id: str) -> None:
    persist(_WATCHED_SWEEP, sweep_id)


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
_RESTORED = "restored"
_SESSION_PROBLEM = "session_problem"


def session_id() -> str:
    """This browser session's id: from the URL (?s=...) after a reload, else a new one. Its state is on disk."""
    if _SID not in st.session_state:
        sid = st.query_params.get("s")
        if not workspace.valid_session_id(sid):
            sid = workspace.new_session_id()
        st.session_state[_SID] = sid
        st.session_state[_PERSIST], problem = workspace.read_session_checked(sid)
        if problem:
            st.session_state[_SESSION_PROBLEM] = problem
    return st.session_state[_SID]


def session_problem() -> str | None:
    """Why this browser session's saved state could not be restored (once; None when it was, or was told)."""
    session_id()
    return st.session_state.pop(_SESSION_PROBLEM, None)


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
    """Find each field's value before the widgets are drawn: this session's last value, else the page link's
    (``link`` names the fields a URL may set, e.g. ``?layer=11``), else the draft kept on disk (a reload), else the
    default. ``fits(field, value)`` drops values a widget cannot take.

    A restored value is handed to its widget as the widget's own default (:func:`field`), on every run, never only
    once through ``st.session_state``: a value set that way reaches the browser in one run's message only, and a
    browser that missed that run (a slow server, a run cut short by the next one) drew the widget's empty default
    and sent it back — the Layer scan's "Sets" came back empty after a reload."""
    draft = persisted(f"form-{form}") or {}
    restored = st.session_state.setdefault(f"{_RESTORED}-{form}", {})
    for name, default in defaults.items():
        if form_key(form, name) in st.session_state:
            continue
        value = draft.get(name, default)
        if name in link and name in st.query_params:
            linked = _from_link(st.query_params[name], default)
            value = value if linked is None else linked
        if isinstance(default, float) and type(value) is int:
            value = float(value)
        if type(value) is not type(default):
            value = default
        if fits is not None and not fits(name, value):
            value = default
        restored[name] = value


def field(form: str, name: str, options=None) -> dict:
    """A form widget's arguments: its key, and its current value as its default (``index`` into ``options`` for a
    selectbox or radio), so what the browser draws never depends on which run's message it received."""
    value = form_value(form, name)
    kwargs: dict[str, Any] = {"key": form_key(form, name)}
    if options is not None:
        options = list(options)
        kwargs["index"] = options.index(value) if value in options else 0
    elif value is None:  # nothing restored: the widget's own default
        pass
    elif isinstance(value, list):
        kwargs["default"] = value
    else:
        kwargs["value"] = value
    return kwargs


def form_value(form: str, field: str) -> Any:
    """The field's value now: the widget's, else the one restored for it (before its widget is drawn)."""
    k = form_key(form, field)
    if k in st.session_state:
        return st.session_state[k]
    return st.session_state.get(f"{_RESTORED}-{form}", {}).get(field)


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
    sugg = scan_suggestion(spec)
    return sugg.get("seconds_per_word") if sugg else None
