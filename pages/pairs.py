"""Word pairs: the trained and control sets, uploads with a validation report, leakage, downloads."""

import streamlit as st

from tli_core.pairs import FORMATS, check_leakage, pairs_to_bytes, read_pairs, split_pairs
from tli_core.workspace import default_pairsets, list_pairsets
from ui import state
from ui.models import get_pairs, pair_reports, pair_sources, set_pairs, use_saved_pairs
from ui.widgets import md, searchable, show_error

st.title("Word pairs")
st.caption("Trained pairs are what TLI trains on; control pairs are never trained on and test generalisation. "
           "Files: CSV/TSV with a header `swahili,english` (or `source,target`), a JSON list of objects (or "
           '`{"pairs": [...]}`), or JSONL. Text is NFC-normalised and trimmed; multi-word expressions are kept.')

pairs = get_pairs()
sources = pair_sources()
reports = pair_reports()

leak = check_leakage(pairs["trained"], pairs["control"])
if leak.leaks:  # one finding a line
    st.error("Trained and control sets overlap:  \n" + "  \n".join(md(line) for line in leak.leak_lines())
             + "  \nTraining refuses them unless you tick “Accept pairs that are in both sets” on the Train or Sweeps "
               "page.", icon="⚠️")
if leak.warning_lines():
    st.warning("  \n".join(md(line) for line in leak.warning_lines()))
if not leak.leaks and not leak.warning_lines():
    st.success("No overlap between the trained and control sets.", icon=":material/check_circle:")

saved = list_pairsets()


def use_kept(which: str) -> None:
    """The kept set picked in the select becomes the session's set at once (no second button)."""
    h = st.session_state.get(f"kept-{which}")
    if h:
        use_saved_pairs(which, h)
    st.session_state[f"kept-{which}"] = None
# fixed labels: a label that changes (a count after an upload) makes a new set of tabs, and the view jumps to the first
tabs = st.tabs(["Trained", "Control", "Split one file"])
for tab, which in zip(tabs[:2], ("trained", "control"), strict=True):
    with tab:
        st.caption(f"Source: {md(sources[which].label)} — **{len(pairs[which])} pairs**, kept since "
                   f"{sources[which].uploaded} (every set you use is kept in the workspace, so a reload or a "
                   f"restart brings it back)")
        lines = reports.get(which) or []
        if lines:
            with st.expander("Validation report", expanded=len(lines) > 1):
                for line in lines:
                    st.markdown(f"- {md(line)}")
        df = searchable(pairs[which], key=f"search-{which}")
        st.dataframe(df, hide_index=True, width="stretch", height=360)  # downloads: the buttons below
        if "category" in pairs[which]:
            counts = pairs[which]["category"].value_counts()
            st.caption("By category: " + md(", ".join(f"{k} {v}" for k, v in counts.items())))
        c1, c2 = st.columns(2)
        fmt = c1.selectbox("Download format", FORMATS, key=f"fmt-{which}")
        c1.download_button(f"Download {which} pairs", pairs_to_bytes(pairs[which], fmt),
                           file_name=f"pairs_{which}.{fmt}", key=f"dl-{which}", icon=":material/download:")
        upload = c2.file_uploader(f"Replace the {which} set", type=list(FORMATS) + ["txt"], key=f"up-{which}")
        if upload is not None and state.uploaded_marker(which) != (upload.name, upload.size):
            # read once: a file that failed says why in this run only, and the message goes with the next action
            state.set_uploaded_marker(which, (upload.name, upload.size))
            try:
                df, rep = read_pairs(upload.getvalue(), source=upload.name, drop_empty=True)
                set_pairs(which, df, upload.name, rep.lines())
                st.rerun()
            except Exception as exc:
                show_error(exc)
        others = [s for s in saved if s.hash != sources[which].hash]
        if others:
            c2.selectbox(f"Or use a kept set as the {which} set (one click)", [None] + [s.hash for s in others],
                         key=f"kept-{which}", on_change=use_kept, args=(which,),
                         format_func=lambda h, by={s.hash: s for s in others}: "—" if h is None else
                         f"{by[h].label} ({by[h].rows} pairs, {by[h].uploaded})")
        if c2.button(f"Reset {which} to the shipped set", key=f"reset-{which}"):
            use_saved_pairs(which, default_pairsets()[which].hash)
            state.set_uploaded_marker(which, None)
            st.rerun()

with tabs[2]:
    st.markdown("Upload one pair file and split it into trained and control sets with a fixed seed "
                "(stratified by a column such as `category` if it has one).")
    upload = st.file_uploader("Pair file to split", type=list(FORMATS) + ["txt"], key="up-split")
    if upload is not None:
        try:
            full, rep = read_pairs(upload.getvalue(), source=upload.name, drop_empty=True)
            st.caption(md(" · ".join(rep.lines())))
            c1, c2, c3 = st.columns(3)
            n_control = c1.number_input("Control pairs", 1, max(1, len(full) - 2), min(63, max(1, len(full) // 10)))
            seed = c2.number_input("Seed", 0, 10**6, 0)
            strat = c3.selectbox("Stratify by",
                                 ["(none)"] + [c for c in full.columns if c not in ("swahili", "english")])
            if st.button("Split and use", type="primary"):
                trained, control = split_pairs(full, int(n_control), int(seed), None if strat == "(none)" else strat)
                set_pairs("trained", trained, f"{upload.name} (split seed {seed}, trained part)", rep.lines())
                set_pairs("control", control, f"{upload.name} (split seed {seed}, control part)", rep.lines())
                st.rerun()
        except Exception as exc:
            show_error(exc)
