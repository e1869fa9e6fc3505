"""Start the dashboard: ``python -m ui.serve [streamlit run options]`` (what `make run` does).

app.py routes every page with ``st.navigation``. Streamlit also knows an older convention in
which a ``pages/`` folder beside the entry point *is* the navigation; until some session has run
app.py, it serves a deep link (``/train``) that way, running the page file alone, outside
app.py's frame. The routing mode is decided once per server, so the launcher declares it
before the server starts, and no page has to undo it.
"""

from __future__ import annotations

import sys
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app.py"


def main(argv: list[str] | None = None) -> int:
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.web import cli as streamlit_cli

    PagesManager.uses_pages_directory = False  # app.py's st.navigation is the router, from the first request
    sys.argv = ["streamlit", "run", str(APP), *(sys.argv[1:] if argv is None else argv)]
    return streamlit_cli.main()


if __name__ == "__main__":
    sys.exit(main())
