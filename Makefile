# Two commands: `make run` (the demo on the bundled weights) and `make test` (the whole test suite).
# Each creates .venv on first use and installs only what it needs: `run` requirements.txt (the library,
# the command line and the demo), `test` requirements-dev.txt (that plus test and benchmark packages).
VENV      ?= .venv
PY        := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: run test chromium clean

$(PY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip

$(RUN_STAMP): requirements.txt | $(PY)
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

$(DEV_STAMP): requirements.txt requirements-dev.txt | $(PY)
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	$(VENV)/bin/pip install -q --no-deps pyiqa==0.1.16  # see requirements-dev.txt
	touch $@ $(RUN_STAMP)

# Debian's Chromium for the browser test (browser downloads are not reachable).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  elif command -v sudo >/dev/null 2>&1; then sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not installed and no root: the browser test will be skipped"; fi; }

run: $(RUN_STAMP)
	$(PY) app.py

test: $(DEV_STAMP) chromium
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
