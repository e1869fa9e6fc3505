"""TLI Studio: the Streamlit entry point and router. Run with `make run` (127.0.0.1:8501)."""

from pathlib import Path

from tli_core.util import quiet_libraries

quiet_libraries()  # before the libraries are imported: some log at import time

import streamlit as st  # noqa: E402

from ui import state  # noqa: E402
from ui.models import get_pairs, start_autoload  # noqa: E402
from ui.widgets import md, show_error, sidebar  # noqa: E402

# the icon as a file served by this server: a ":material/…:" page icon makes the browser fetch it from a font service
ICON = Path(__file__).resolve().parent / "assets" / "favicon.png"
st.set_page_config(page_title="TLI Studio", page_icon=str(ICON), layout="wide")

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
state.keep_session_in_url()  # ?s=<id>: a reload (or a server restart) brings this session's choices back
if problem := state.session_problem():  # a damaged session file: this session starts from the defaults
    st.warning(f"unreadable: {md(problem)}; this browser session starts from the defaults.", icon="⚠️")

start_autoload()  # in the background, once per server: no page waits for it unless it needs the model

try:
    get_pairs()  # the session's sets (restored from the workspace) before the sidebar names them
except Exception as exc:  # a broken workspace must not hide the pages
    show_error(exc)
sidebar()
navigation.run()
