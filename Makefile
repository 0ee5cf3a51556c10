# Two entry points for a fresh machine: `make run` (quick benchmark) and `make test`.
# Both create .venv on first use; torch is pinned to the 2.13.0 CPU wheel.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test install docs clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[bench,test,peers,hf,lightning,sdp]"
	touch $@

install: $(VENV)/.installed

run: $(VENV)/.installed
	$(PY) -m steepest bench

# The tests run on every core (pytest-xdist, one torch thread per worker: tests/conftest.py).
test: $(VENV)/.installed
	$(PY) -m pytest -n auto

# Rewrite the files generated from the preset registry (exports, docs/choosing.md tables).
docs: $(VENV)/.installed
	$(PY) tools/generate.py

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
