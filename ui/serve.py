"""Start the dashboard: ``python -m ui.serve [streamlit run options]`` (what `make run` does).

app.py routes every page with ``st.navigation``. Streamlit also knows an older convention in
which a ``pages/`` folder beside the entry point *is* the navigation; until some session has run
app.py, it serves a deep link (``/train``) that way, running the page file alone, outside
app.py's frame. The routing mode is decided once per server, so the launcher declares it
before the server starts, and no page has to undo it.

DNS rebinding: a page on ``evil.example`` whose name the attacker re-points at 127.0.0.1 is, to
the browser, same-origin with itself, so it could drive the dashboard (delete runs, import
adapters). The server therefore answers only requests whose ``Host`` is a name it was started
for: Streamlit's ``server.allowedHosts`` (which guards the WebSocket that runs the app) is set
from the listening address, and the same check refuses plain HTTP requests with 403. Listening
on every address (``HOST=0.0.0.0``) allows the machine's own names and addresses; other names
(a DNS alias, a reverse proxy) are added with ``TLI_ALLOWED_HOSTS=name1,name2``.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app.py"
LOOPBACK = ["localhost", "127.0.0.1", "::1"]
EVERY_ADDRESS = ("", "0.0.0.0", "::")


def _own_names() -> set[str]:
    """The names and addresses other machines may use for this one (best effort, no network traffic)."""
    names = {socket.gethostname(), socket.getfqdn()}
    for name in list(names):
        try:
            names |= {info[4][0] for info in socket.getaddrinfo(name, None)}
        except OSError:
            pass
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:  # the address of the default route: connect() on UDP picks it without sending anything
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))
                names.add(s.getsockname()[0])
        except OSError:
            pass
    return {n for n in names if n}


def allowed_hosts(address: str) -> list[str]:
    """The ``Host`` names a server listening on ``address`` answers to (loopback names always)."""
    hosts = set(LOOPBACK)
    hosts |= _own_names() if address in EVERY_ADDRESS else {address.strip("[]")}
    hosts |= {h.strip() for h in os.environ.get("TLI_ALLOWED_HOSTS", "").split(",") if h.strip()}
    return sorted(hosts)


def _option(argv: list[str], name: str) -> str | None:
    """The value of ``--name value`` or ``--name=value`` in a streamlit command line (the last one)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def _with_allowed_hosts(argv: list[str]) -> list[str]:
    """``argv`` plus ``--server.allowedHosts`` for each name, unless the command line or the environment sets it."""
    if _option(argv, "--server.allowedHosts") is not None or os.environ.get("STREAMLIT_SERVER_ALLOWED_HOSTS"):
        return argv
    address = _option(argv, "--server.address")
    if address is None:
        from streamlit import config

        address = config.get_option("server.address") or ""
    return [*argv, *[arg for host in allowed_hosts(address) for arg in ("--server.allowedHosts", host)]]


class HostCheck:
    """ASGI middleware: plain HTTP requests with a ``Host`` outside ``server.allowedHosts`` get 403.

    Streamlit checks the WebSocket's Host itself; this covers the page, its static files and media.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            from streamlit.web.server.starlette.starlette_websocket import is_host_allowed

            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1") or None
            if not is_host_allowed(host):
                from starlette.responses import PlainTextResponse

                await PlainTextResponse("This server does not answer to that host name.", 403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _install_host_check() -> None:
    from starlette.middleware import Middleware
    from streamlit.web.server.starlette import starlette_app

    streamlit_middleware = starlette_app.create_streamlit_middleware
    starlette_app.create_streamlit_middleware = lambda: [Middleware(HostCheck), *streamlit_middleware()]


def main(argv: list[str] | None = None) -> int:
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.web import cli as streamlit_cli

    PagesManager.uses_pages_directory = False  # app.py's st.navigation is the router, from the first request
    _install_host_check()
    argv = _with_allowed_hosts(list(sys.argv[1:] if argv is None else argv))
    sys.argv = ["streamlit", "run", str(APP), *argv]
    return streamlit_cli.main()


if __name__ == "__main__":
    sys.exit(main())
