"""End to end in a real browser: Debian's chromium, driven by Playwright, against `make run`.

Load the demo model, scan, train one epoch on a small subset, open Compare and find the
t-test table. Screenshots go to artifacts/screenshots/ (ignored by git).

The server is slowed on purpose (TLI_SLOW_SECONDS: a delay before the model load and in every
poll), as a busy machine is, and the browser may reach nothing but this server: a request
elsewhere (a font or icon service) is refused and recorded, and the walk-through fails on it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = pytest.mark.browser
SLOW = 1  # seconds: the delay injected into the server's model load and polls (a slow server)
OUTSIDE = re.compile(r"^(?!(https?|wss?)://(127\.0\.0\.1|localhost)[:/])[a-z]+://(?!/)")  # not this machine, not file://


def refuse_outside(context) -> list[str]:
    """Refuse every request to another host, and keep its URL: the app must need nothing from the internet."""
    tried: list[str] = []

    def refuse(route):
        tried.append(route.request.url)
        route.abort()

    context.route(OUTSIDE, refuse)
    return tried


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
    # float32 compute (NF4 weights kept): on CPUs without bf16 units a bf16 matmul is 10-25x slower
    env = dict(os.environ, TLI_RUNS_DIR=str(runs), PORT=str(port), TLI_SLOW_SECONDS=str(SLOW),
               TLI_DEFAULT_COMPUTE="float32")
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


def test_walk_through_scan_train_compare(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic", "--no-first-run",
            "--disable-component-update", "--disable-sync"])
        # tall: Streamlit scrolls inside its own container, so a full-page shot is the viewport
        context = browser.new_context(viewport={"width": 1500, "height": 2400})
        outside = refuse_outside(context)
        page = context.new_page()
        page.set_default_timeout(120_000)
        expect.set_options(timeout=120_000)

        # A deep link opened first on a fresh server (a refresh after `make run` restarted) gets the
        # app's frame, not Streamlit's legacy pages/ mode (file-name menu, no model sidebar). The Runs
        # page reads only run directories: it is there while the model still loads in the background
        page.goto(server["url"] + "/runs")
        expect(page.get_by_role("heading", name="Runs")).to_be_visible(timeout=300_000)
        sidebar = page.get_by_test_id("stSidebar")
        expect(sidebar.get_by_text("loading", exact=False).first).to_be_visible(timeout=10_000)
        page.screenshot(path=str(SHOTS / "00-runs-while-the-model-loads.png"), full_page=True)
        expect(sidebar.get_by_role("link", name="Layer scan")).to_be_visible()
        expect(sidebar.get_by_text("Loaded model")).to_be_visible(timeout=180_000)
        assert sidebar.get_by_role("link", name="common").count() == 0
        assert urlsplit(page.url).path.endswith("/runs") and "s=" in page.url  # the session id travels along

        # Home: the demo model loads by itself (once per server)
        page.goto(server["url"])
        expect(page.get_by_role("heading", name="TLI Studio")).to_be_visible(timeout=300_000)
        sidebar = page.get_by_test_id("stSidebar")
        # the model loads in the background (minutes on a busy 2-core machine; the Runs page above did not wait)
        expect(sidebar.get_by_text("SmolLM2-135M-Instruct", exact=False).first).to_be_visible(timeout=600_000)
        expect(page.get_by_text("Two facts about the method")).to_be_visible()
        page.screenshot(path=str(SHOTS / "01-home.png"), full_page=True)

        # Model: facts of the NF4 demo model
        sidebar.get_by_role("link", name="Model").click()
        expect(page.get_by_role("heading", name="Model", exact=True)).to_be_visible()
        expect(page.get_by_text("nf4 (210 bitsandbytes layers)", exact=False)).to_be_visible()
        page.screenshot(path=str(SHOTS / "02-model.png"), full_page=True)

        # Word pairs: upload a set shaped like the authors' (JSON; a Swahili word with two translations), then reload
        authors = tmp_path / "authors_word_pairs.json"
        shipped = pd.read_csv(ROOT / "assets" / "pairs_trained.csv").head(120)
        rows = [{"swahili": s, "english": e} for s, e in zip(shipped["swahili"], shipped["english"], strict=True)]
        rows.append({"swahili": rows[0]["swahili"], "english": "another sense"})
        authors.write_text(json.dumps(rows))
        sidebar.get_by_role("link", name="Word pairs").click()
        expect(page.get_by_role("heading", name="Word pairs", level=1)).to_be_visible()
        page.locator("input[type=file]").first.set_input_files(str(authors))
        expect(page.get_by_text("121 pairs", exact=False).first).to_be_visible()
        page.reload()  # nothing uploaded is lost: the set is kept in the workspace, the session id is in the URL
        expect(page.get_by_text("121 pairs", exact=False).first).to_be_visible(timeout=120_000)
        sidebar = page.get_by_test_id("stSidebar")
        expect(sidebar.get_by_text("authors_word_pairs.json", exact=False)).to_be_visible()

        # Layer scan
        sidebar.get_by_role("link", name="Layer scan").click()
        page.get_by_role("button", name="Run the scan").click()
        expect(page.get_by_text("Scan took", exact=False)).to_be_visible(timeout=180_000)
        expect(page.locator(".js-plotly-plot").first).to_be_visible()
        expect(page.get_by_text("Raw-cosine peak (the paper's rule)")).to_be_visible()
        page.screenshot(path=str(SHOTS / "03-scan.png"), full_page=True)
        # the scan's settings are in the link and survive a reload (the result comes from the server's cache)
        page.get_by_test_id("stRadio").get_by_text("control", exact=True).click()
        expect(page).to_have_url(re.compile(r"show=control"))
        assert "pooling=mean" in page.url and "s=" in page.url
        page.reload()
        expect(page.get_by_text("Scan took", exact=False)).to_be_visible(timeout=120_000)
        expect(page.get_by_test_id("stRadio").locator("input[type=radio]").nth(1)).to_be_checked()
        chips = page.get_by_test_id("stMultiSelect").first  # the Sets came back (they came back empty on a slow server)
        expect(chips.get_by_text("trained", exact=True)).to_be_visible()
        expect(chips.get_by_text("control", exact=True)).to_be_visible()
        sidebar = page.get_by_test_id("stSidebar")

        # Train: the paper's layer 2 stays, the scan's suggestion is a button; the uploaded set is named
        sidebar.get_by_role("link", name="Train").click()
        expect(page.get_by_text("authors_word_pairs.json", exact=False).first).to_be_visible()
        expect(page.get_by_role("button", name=re.compile("^Use layer"))).to_be_visible()
        expect(page.get_by_text("2 — block 2").first).to_be_visible()
        for label, value in (("Epochs", "1"), ("Trained subset (0 = all)", "48"),
                             ("Control subset (0 = all)", "16"), ("Warm-up steps", "2")):
            box = page.get_by_label(label, exact=True)
            box.fill(value)
            box.press("Enter")  # Enter commits the value, and never launches anything
            page.wait_for_timeout(600)
        # before the first run the page measures the model's speed here (a few seconds, longer on a busy machine)
        expect(page.get_by_text("estimated duration", exact=False)).to_be_visible(timeout=120_000)
        page.screenshot(path=str(SHOTS / "04a-train-form.png"), full_page=True)
        assert not [d for d in Path(server["runs"]).iterdir() if not d.name.startswith(".")]
        page.get_by_role("button", name="Launch training").click()
        expect(page.get_by_text("Running now:", exact=False)).to_be_visible(timeout=60_000)
        page.screenshot(path=str(SHOTS / "04b-train-running.png"), full_page=True)
        run_heading = page.get_by_role("heading", name=re.compile(r"^Run \d{8}-"))  # the run, its ⚠ list under it
        expect(run_heading).to_be_visible(timeout=60_000)
        flagged = page.get_by_text("⚠️", exact=False).count()
        page.reload()  # mid-run: nothing of the page is lost
        expect(page.get_by_text("Running now:", exact=False)).to_be_visible(timeout=60_000)
        expect(run_heading).to_be_visible(timeout=60_000)
        expect(page.get_by_role("button", name=re.compile("^Use layer"))).to_be_visible()
        expect(page.get_by_text("estimated duration", exact=False)).to_be_visible()
        expect(page.get_by_text("⚠️", exact=False)).to_have_count(flagged)  # drawn under the run's heading
        page.screenshot(path=str(SHOTS / "04b2-train-reloaded-mid-run.png"), full_page=True)
        expect(page.get_by_text("Done:", exact=False)).to_be_visible(timeout=600_000)  # minutes on a busy machine
        expect(page.locator(".js-plotly-plot").first).to_be_visible()
        page.screenshot(path=str(SHOTS / "04c-train-done.png"), full_page=True)

        # Compare: the protocols side by side and the paired t-test table for trained and control
        page.get_by_role("link", name="Open Compare").click()
        expect(page.get_by_text("What changed at layer", exact=False)).to_be_visible()
        expect(page.get_by_text("The evaluation protocols side by side")).to_be_visible()
        table = page.get_by_test_id("stTable").first
        expect(table).to_contain_text("specific effect")  # leads; the paper's raw cosine and its paired t follow
        expect(table).to_contain_text("raw cosine (paper)")
        expect(table).to_contain_text("p corrected")
        expect(table).to_contain_text("trained")
        expect(table).to_contain_text("control")
        page.get_by_text("paper-code (the authors' published script)", exact=True).click()
        expect(page.get_by_text("What changed at layer 2 (block 2), paper-code")).to_be_visible()
        expect(page.locator(".js-plotly-plot").nth(5)).to_be_visible()
        page.screenshot(path=str(SHOTS / "05-compare.png"), full_page=True)
        link = page.url
        assert "run=" in link and "protocol=paper-code" in link

        # The report: one HTML file that opens from disk, with its figures, no server needed
        with page.expect_download(timeout=180_000) as download:
            page.get_by_role("button", name="Export report (HTML)").click()
        report = tmp_path / "report.html"
        download.value.save_as(report)

        # A link to this view, opened by a collaborator in a fresh browser context
        other = browser.new_context(viewport={"width": 1500, "height": 2400})
        outside += refuse_outside(other)
        view = other.new_page()
        view.set_default_timeout(120_000)
        parts = urlsplit(link)  # the view's own parameters, without this browser's session id
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "s"])
        view.goto(urlunsplit(parts._replace(query=query)))
        expect(view.get_by_text("What changed at layer 2 (block 2), paper-code")).to_be_visible(timeout=180_000)
        expect(view.locator(".js-plotly-plot").nth(5)).to_be_visible()
        view.screenshot(path=str(SHOTS / "05b-compare-from-a-link.png"), full_page=True)
        offline = other.new_page()
        offline.goto(report.as_uri())
        expect(offline.get_by_text("Results under each evaluation protocol")).to_be_visible()
        expect(offline.locator(".js-plotly-plot").nth(3)).to_be_visible()
        offline.screenshot(path=str(SHOTS / "12-report-from-disk.png"), full_page=False)
        other.close()

        # Downstream benchmarks of this run (the local lm-eval tasks, 8 items each), launched from Compare
        expect(page.get_by_text("Downstream benchmarks: base vs tuned")).to_be_visible()
        items = page.get_by_label("Items per task (0 = all)", exact=True)
        items.fill("8")
        items.press("Tab")
        page.get_by_role("button", name="Run the benchmarks").click()
        expect(page.get_by_text("Downstream benchmarks, 0-shot, first 8 items per task", exact=False)).to_be_visible(
            timeout=300_000)
        expect(page.get_by_role("button", name="Download every item (CSV)")).to_be_visible()  # the items are kept
        page.get_by_text("Downstream benchmarks: base vs tuned").scroll_into_view_if_needed()
        page.screenshot(path=str(SHOTS / "13-benchmarks.png"), full_page=True)

        # Research views. A one-cell sweep (target layer 2, LoRA rank 4) over seeds 1 and 2, each with its placebo
        sidebar.get_by_role("link", name="Sweeps").click()
        expect(page.get_by_role("heading", name="Sweeps")).to_be_visible()
        for label, value in (("Target-layer settings", "2"), ("Epochs per cell", "1"),
                             ("Trained subset (0 = all)", "16"), ("Seeds", "1,2")):
            box = page.get_by_label(label, exact=True)
            box.fill(value)
            box.press("Tab")
        ranks = page.get_by_test_id("stMultiSelect").first
        ranks.click()
        page.keyboard.press("Backspace")  # ranks 4, 16 -> 4: one cell
        page.keyboard.press("Escape")
        expect(page.get_by_text("= 4 runs", exact=False)).to_be_visible()
        page.get_by_role("button", name="Start the sweep").click()
        expect(page.get_by_text("done: 4 of 4 units finished")).to_be_visible(timeout=600_000)
        expect(page.locator(".js-plotly-plot").nth(1)).to_be_visible()
        page.screenshot(path=str(SHOTS / "07-sweeps.png"), full_page=True)
        # a star only where the effect is specific to translations in every seed and beyond the placebo, by hand
        # from the units' per-pair tables; a raw rise the non-translations share never earns one
        (sweep_dir,) = (Path(server["runs"]) / "sweeps").iterdir()
        units = json.loads((sweep_dir / "cells.json").read_text())
        specific = {"tli": [], "placebo": []}
        for u in units:
            pairs = pd.read_csv(Path(server["runs"]) / u["run"] / "eval" / "studio" / "pairs.csv")
            ctrl = pairs[pairs["set"] == "control"]
            specific[u.get("arm", "tli")].append(((ctrl["after"] - ctrl["nontrans_after"])
                                                  - (ctrl["before"] - ctrl["nontrans_before"])).mean())
        earned = min(specific["tli"]) > 0 and np.mean(specific["tli"]) > np.mean(specific["placebo"])
        starred = page.get_by_text("★ Best cell", exact=False).count() > 0
        assert starred <= earned, (specific, "a star the evidence does not support")
        if not starred:
            expect(page.get_by_text("No cell qualifies for a ★", exact=False)).to_be_visible()
            assert not re.search(r"\d ★", page.locator(".js-plotly-plot").first.inner_text())  # no starred cell

        # Runs: two runs' results side by side (the walk-through's run and a sweep cell)
        sidebar.get_by_role("link", name="Runs").click()
        expect(page.get_by_role("heading", name="Runs")).to_be_visible()
        picker = page.get_by_test_id("stMultiSelect").first
        for option in (re.compile(r"-demo-L2-r16$"), re.compile(r"-c0-s1$")):  # the run, and the sweep's first unit
            picker.click()
            page.get_by_role("option", name=option).click()
            page.keyboard.press("Escape")
            expect(picker.get_by_text(option)).to_be_visible()  # the pick shows as a chip, as a user would see
            page.wait_for_timeout(800)
        expect(page.get_by_text("2 runs side by side")).to_be_visible()
        expect(picker.get_by_text(re.compile(r"-demo-L2-r16$"))).to_be_visible()  # no pick was lost on the way
        expect(page.locator(".js-plotly-plot").first).to_be_visible()
        page.screenshot(path=str(SHOTS / "06-runs-compare.png"), full_page=True)

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
    assert outside == [], f"the app reached for the internet: {outside[:5]}"
    runs = [d for d in Path(server["runs"]).iterdir() if not d.name.startswith(".") and d.name != "sweeps"]
    assert len(runs) == 5 and all((r / "summary.json").is_file() for r in runs)  # the run and 4 sweep units
    status = json.loads(next(r for r in runs if "sweep" not in r.name).joinpath("status.json").read_text())
    assert status["pairs"]["trained"]["name"].startswith("authors_word_pairs.json")


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
        expect(page.get_by_role("heading", name="Word pairs", level=1)).to_be_visible(timeout=300_000)
        page.locator("input[type=file]").first.set_input_files(str(name))
        expect(page.get_by_text("Source:", exact=False).first).to_contain_text(name.name)
        expect(page.get_by_text("4 pairs", exact=False).first).to_be_visible()  # the words sit in the grid's canvas
        page.get_by_text("Validation report").first.click()
        page.screenshot(path=str(SHOTS / "11-pairs-payload.png"), full_page=True)
        assert page.locator(f"img[src*='{listener.server_port}']").count() == 0
        assert page.locator(f"a[href*='{listener.server_port}']").count() == 0
        browser.close()
    listener.shutdown()
    assert fetched == []
