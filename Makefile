# Two commands: `make run` (the demo on the bundled weights) and `make test` (the whole test suite).
# Each creates .venv and installs what it needs on first use.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: run test denoise chromium clean

$(STAMP): requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	touch $(STAMP)

# Debian's Chromium for the browser test (browser downloads are not reachable).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  elif command -v sudo >/dev/null 2>&1; then sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not installed and no root: the browser test will be skipped"; fi; }

run: $(STAMP)
	$(PY) app.py

test: $(STAMP) chromium
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
