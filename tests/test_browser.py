"""End to end in a real browser: Debian's chromium, driven by Playwright, against `make run`.

Load the demo model, scan, train one epoch on a small subset, open Compare and find the
t-test table. Screenshots go to artifacts/screenshots/ (ignored by git).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        if os.environ.get("TLI_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is not installed (make test installs it with apt-get)")
        pytest.skip("chromium is not installed; `make browser` installs it")
    port = _free_port()
    runs = tmp_path_factory.mktemp("browser-runs")
    env = dict(os.environ, TLI_RUNS_DIR=str(runs), PORT=str(port))
    log = open(tmp_path_factory.mktemp("server") / "server.log", "w")
    proc = subprocess.Popen(["make", "--no-print-directory", "run", f"PORT={port}"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    break
        except OSError:
            time.sleep(1)
        if proc.poll() is not None:
            raise RuntimeError(f"make run exited with {proc.returncode}: {Path(log.name).read_text()[-2000:]}")
    else:
        raise RuntimeError("the server did not come up within 300 s")
    yield {"url": url, "runs": runs, "port": port}
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


def test_server_listens_on_localhost_only(server):
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", server["port"])) == 0
    other = [a for a in socket.gethostbyname_ex(socket.gethostname())[2] if not a.startswith("127.")]
    for address in other:
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((address, server["port"])) != 0, f"also listening on {address}"


def test_walk_through_scan_train_compare(server):
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic", "--no-first-run",
            "--disable-component-update", "--disable-sync"])
        # tall: Streamlit scrolls inside its own container, so a full-page shot is the viewport
        page = browser.new_page(viewport={"width": 1500, "height": 2400})
        page.set_default_timeout(120_000)
        expect.set_options(timeout=120_000)

        # A deep link opened first on a fresh server (a refresh after `make run` restarted) gets the
        # app's frame, not Streamlit's legacy pages/ mode (file-name menu, no model sidebar)
        page.goto(server["url"] + "/runs")
        expect(page.get_by_role("heading", name="Runs")).to_be_visible(timeout=300_000)
        sidebar = page.get_by_test_id("stSidebar")
        expect(sidebar.get_by_role("link", name="Layer scan")).to_be_visible()
        expect(sidebar.get_by_text("Loaded model")).to_be_visible(timeout=180_000)
        assert sidebar.get_by_role("link", name="common").count() == 0
        assert page.url.endswith("/runs")

        # Home: the demo model loads by itself (once per server)
        page.goto(server["url"])
        expect(page.get_by_role("heading", name="TLI Studio")).to_be_visible(timeout=300_000)
        sidebar = page.get_by_test_id("stSidebar")
        expect(sidebar.get_by_text("SmolLM2-135M-Instruct", exact=False).first).to_be_visible(timeout=180_000)
        expect(page.get_by_text("Two facts about the method")).to_be_visible()
        page.screenshot(path=str(SHOTS / "01-home.png"), full_page=True)

        # Model: facts of the NF4 demo model
        sidebar.get_by_role("link", name="Model").click()
        expect(page.get_by_role("heading", name="Model", exact=True)).to_be_visible()
        expect(page.get_by_text("nf4 (210 bitsandbytes layers)", exact=False)).to_be_visible()
        page.screenshot(path=str(SHOTS / "02-model.png"), full_page=True)

        # Layer scan
        sidebar.get_by_role("link", name="Layer scan").click()
        page.get_by_role("button", name="Run the scan").click()
        expect(page.get_by_text("Scan took", exact=False)).to_be_visible(timeout=180_000)
        expect(page.locator(".js-plotly-plot").first).to_be_visible()
        expect(page.get_by_text("Raw-cosine peak (the paper's rule)")).to_be_visible()
        page.screenshot(path=str(SHOTS / "03-scan.png"), full_page=True)

        # Train one epoch on a small subset
        sidebar.get_by_role("link", name="Train").click()
        for label, value in (("Epochs", "1"), ("Trained subset (0 = all)", "48"),
                             ("Control subset (0 = all)", "16"), ("Warm-up steps", "2")):
            box = page.get_by_label(label, exact=True)
            box.fill(value)
            box.press("Tab")
        page.get_by_role("button", name="Launch training").click()
        expect(page.get_by_text("Done:", exact=False)).to_be_visible(timeout=300_000)
        expect(page.locator(".js-plotly-plot").first).to_be_visible()
        page.screenshot(path=str(SHOTS / "04-train.png"), full_page=True)

        # Compare: the paired t-test table for trained and control
        page.get_by_role("link", name="Open Compare").click()
        expect(page.get_by_text("Paired statistics at layer", exact=False)).to_be_visible()
        table = page.get_by_test_id("stTable").first
        expect(table).to_contain_text("p (paired t)")
        expect(table).to_contain_text("trained")
        expect(table).to_contain_text("control")
        expect(page.locator(".js-plotly-plot").nth(5)).to_be_visible()
        page.screenshot(path=str(SHOTS / "05-compare.png"), full_page=True)

        # Runs: the run is listed as done
        sidebar.get_by_role("link", name="Runs").click()
        expect(page.get_by_role("heading", name="Runs")).to_be_visible()
        expect(page.get_by_test_id("stDataFrame").first).to_be_visible()
        page.screenshot(path=str(SHOTS / "06-runs.png"), full_page=True)

        # Research views. A 2 x 2 sweep (target layers 1, 2 x ranks 4, 16) on small subsets
        sidebar.get_by_role("link", name="Sweeps").click()
        expect(page.get_by_role("heading", name="Sweeps")).to_be_visible()
        for label, value in (("Target-layer settings", "1,2"), ("Epochs per cell", "1"),
                             ("Trained subset (0 = all)", "48")):
            box = page.get_by_label(label, exact=True)
            box.fill(value)
            box.press("Tab")
        page.get_by_role("button", name="Start the sweep").click()
        expect(page.get_by_text("done: 4 of 4 cells finished")).to_be_visible(timeout=600_000)
        expect(page.get_by_text("Best cell:", exact=False)).to_be_visible()
        expect(page.locator(".js-plotly-plot").nth(1)).to_be_visible()
        page.screenshot(path=str(SHOTS / "07-sweeps.png"), full_page=True)

        sidebar.get_by_role("link", name="Artifact diagnostics").click()
        page.get_by_text("control", exact=True).first.click()
        page.get_by_role("button", name="Run diagnostics").click()
        expect(page.locator(".js-plotly-plot").nth(1)).to_be_visible(timeout=300_000)
        page.screenshot(path=str(SHOTS / "08-diagnostics.png"), full_page=True)

        sidebar.get_by_role("link", name="Embedding map").click()
        page.get_by_role("button", name="Draw the map").click()
        expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=300_000)
        page.screenshot(path=str(SHOTS / "09-embedding-map.png"), full_page=True)

        sidebar.get_by_role("link", name="Generation probes").click()
        page.get_by_role("button", name="Run the probes").click()
        expect(page.get_by_text("Tuned: expected word in the answer")).to_be_visible(timeout=300_000)
        page.screenshot(path=str(SHOTS / "10-probes.png"), full_page=True)
        browser.close()
    runs = [d for d in Path(server["runs"]).iterdir() if not d.name.startswith(".") and d.name != "sweeps"]
    assert len(runs) == 5 and all((r / "summary.json").is_file() for r in runs)  # the run and 4 sweep cells


def test_uploaded_words_and_file_names_are_shown_as_text(server, tmp_path):
    """An uploaded pair file with Markdown/HTML payloads in its words and its name: nothing is fetched."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from playwright.sync_api import expect, sync_playwright

    fetched = []

    class Listener(BaseHTTPRequestHandler):
        def do_GET(self):
            fetched.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    listener = HTTPServer(("127.0.0.1", 0), Listener)
    threading.Thread(target=listener.serve_forever, daemon=True).start()
    host = f"127.0.0.1:{listener.server_port}"
    name = tmp_path / f"![f](http:__{host.replace(':', '_')}_f.png).csv"
    name.write_text(f'swahili,english\n"![t](http://{host}/img.png)",water\n"[click](http://{host}/link)",dog\n'
                    f'"<img src=http://{host}/html.png>",cat\n=HYPERLINK(1),tree\n')
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.set_default_timeout(120_000)
        page.goto(server["url"] + "/pairs")
        expect(page.get_by_role("heading", name="Word pairs")).to_be_visible(timeout=300_000)
        page.locator("input[type=file]").first.set_input_files(str(name))
        expect(page.get_by_text("Source: upload:", exact=False).first).to_contain_text(name.name)
        expect(page.get_by_text("Trained (4)")).to_be_visible()  # the words themselves sit in the grid's canvas
        page.get_by_text("Validation report").first.click()
        page.screenshot(path=str(SHOTS / "11-pairs-payload.png"), full_page=True)
        assert page.locator(f"img[src*='{listener.server_port}']").count() == 0
        assert page.locator(f"a[href*='{listener.server_port}']").count() == 0
        browser.close()
    listener.shutdown()
    assert fetched == []
