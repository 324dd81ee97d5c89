# Shortcuts; the README's two commands are the reference.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint typecheck bench profile

$(VENV)/bin/botsim:
	python3 -m venv $(VENV) && $(VENV)/bin/pip install -q -U 'pip>=25' \
	  && $(VENV)/bin/pip install -q --no-compile -e '.[test]' \
	  && $(VENV)/bin/python -m compileall -q -j 0 $(VENV)/lib -x '/site-packages/(pip|setuptools|.*/tests?)/'

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

# A py-spy flame graph of one worker under run (b)'s load (docs/benchmarks.md, issue 20):
# where a worker's CPU goes, rerunnable. Opens in a browser: .artifacts/worker-profile.svg
profile: $(VENV)/bin/botsim
	mkdir -p .artifacts
	$(PY) -m botsim loadtest --bots 2000 --chats 200 --workers 4 --duration 150 --warmup 30 \
	  --llm-latency-ms 800 --llm-jitter-ms 400 --human-rate 5 --no-progress \
	  --profile .artifacts/worker-profile.svg
