# Shortcuts; the README's two commands are the reference.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint typecheck bench

$(VENV)/bin/botsim:
	python3 -m venv $(VENV) && $(VENV)/bin/pip install -q --no-compile -e '.[test]' \
	  && $(VENV)/bin/python -m compileall -q -j 0 $(VENV)/lib

demo: $(VENV)/bin/botsim
	$(VENV)/bin/botsim demo

test: $(VENV)/bin/botsim
	$(VENV)/bin/ruff check . && $(VENV)/bin/lint-imports && $(PY) -m pytest -q -n 4 --dist loadgroup --durations=15

lint: $(VENV)/bin/botsim
	$(VENV)/bin/ruff check .

typecheck: $(VENV)/bin/botsim
	$(VENV)/bin/mypy

bench: $(VENV)/bin/botsim
	$(PY) loadtest/bench_chain.py --calls 2000
