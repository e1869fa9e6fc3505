"""A sweep's live view, shared by the Sweeps page and Train (seeds and placebo are a one-cell sweep): progress with
the time left given the parallel slots, each unit's phase and step, Stop and Resume."""

from __future__ import annotations

import streamlit as st

from tli_core.errors import TLIError
from tli_core.grid import sweep_eta
from tli_core.jobs.runner import resume_sweep
from tli_core.sweeps import Sweep, units_table

from .widgets import download_csv, md, show_error

ACTIVE = ("queued", "running")


def sweep_progress(sweep: Sweep, key: str) -> dict:
    """Progress bar, time left, units table, Stop (while it runs) and Resume (once it ended unfinished)."""
    status = sweep.status()
    state = status.get("state")
    try:
        eta = sweep_eta(sweep)
    except TLIError as exc:  # this sweep's own files are damaged: said here, every other sweep is unaffected
        show_error(exc)
        return dict(status, state="unreadable")
    st.progress(min(max(eta.fraction, 0.0), 1.0),
                text=f"{state}: {eta.text}" if state in ACTIVE else f"{state}: {eta.done} of {eta.total} units "
                                                                      f"finished")
    plan = status.get("plan") or {}
    if plan and state in ACTIVE:
        st.caption(f"On Ray ({md(status.get('ray_address') or 'local')}): {plan.get('slots') or '?'} unit(s) at a time "
                   f"({md(plan.get('why', ''))}); memory per unit {(plan.get('memory') or 0) / 2**30:.1f} GiB from the "
                   f"model's footprint ({md(plan.get('footprint_basis', ''))}).")
    elif state in ACTIVE:
        st.caption("Starting Ray and the units' worker processes …")
    if state == "invalid":
        st.error(md(status.get("message") or "no unit could run"), icon="⚠️")
    elif status.get("message"):
        st.caption(md(status["message"]))
    c1, c2 = st.columns(2)
    if state in ACTIVE and c1.button("Stop the sweep", icon=":material/stop_circle:", key=f"stop-{key}"):
        try:
            sweep.request_stop()
            st.toast("Stop requested: queued units are cancelled, running ones save what they have within seconds.")
        except Exception as exc:
            show_error(exc)
    if state in ("interrupted", "stopped", "failed") and c2.button("Resume (only the missing units)",
                                                                     icon=":material/replay:", key=f"resume-{key}"):
        try:
            resume_sweep(sweep)
            st.toast("Resumed: finished units are kept, the others run again.")
        except Exception as exc:
            show_error(exc)
    units = units_table(sweep)
    if len(units):
        with st.expander(f"Units ({len(units)}: cell × seed × arm, each an ordinary run)",
                         expanded=state in ACTIVE and len(units) <= 12):
            st.dataframe(units, hide_index=True, width="stretch")
            download_csv(units, f"units_{sweep.id}.csv", "Download the units (CSV)", key=f"dl-units-{key}")
    return status
