"""TLI Studio: the Streamlit entry point. Run with `make run` (127.0.0.1:8501)."""

import streamlit as st

from pages.common import DEEP_LINK, FRAMED, autoload, current_model, default_spec, ensure_model, show_error, sidebar
from tli_core.cli import quiet_libraries

st.set_page_config(page_title="TLI Studio", page_icon=":material/translate:", layout="wide")
quiet_libraries()

PAGES = {
    "": [st.Page("pages/home.py", title="Home", icon=":material/home:", default=True)],
    "Experiment": [
        st.Page("pages/model.py", title="Model", icon=":material/memory:"),
        st.Page("pages/pairs.py", title="Word pairs", icon=":material/translate:"),
        st.Page("pages/scan.py", title="Layer scan", icon=":material/stacked_line_chart:"),
        st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
        st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
        st.Page("pages/runs.py", title="Runs", icon=":material/folder_open:"),
    ],
    "Research": [
        st.Page("pages/sweeps.py", title="Sweeps", icon=":material/grid_on:"),
        st.Page("pages/diagnostics.py", title="Artifact diagnostics", icon=":material/troubleshoot:"),
        st.Page("pages/embedding_map.py", title="Embedding map", icon=":material/scatter_plot:"),
        st.Page("pages/probes.py", title="Generation probes", icon=":material/chat:"),
    ],
}
navigation = st.navigation(PAGES)
st.session_state[FRAMED] = True  # pages check it (pages.common.framed)
if DEEP_LINK in st.session_state:  # a deep link that Streamlit's legacy mode opened without this frame
    st.switch_page(st.session_state.pop(DEEP_LINK))

if autoload() and current_model() is None and not st.session_state.get("autoload_tried"):
    st.session_state["autoload_tried"] = True  # once per session; the model itself is cached per server
    try:
        ensure_model(default_spec())
    except Exception as exc:  # shown, not fatal: the Model page lets the user choose another
        show_error(exc)

sidebar()
navigation.run()
