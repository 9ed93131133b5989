# prunekit: `make demo` runs the main job on the offline default model; `make test` runs the tests.
# Both set up the environment first (idempotent: a second run only checks).
VENV ?= .venv
PY := $(VENV)/bin/python
PRUNEKIT := $(VENV)/bin/prunekit
RUNS ?= runs

.PHONY: setup demo test test-fast compare clean

setup:
	@scripts/setup.sh

# The main job: the default model pruned by 20% (uniform, stock Llama layout) with the default mix.
demo: setup
	$(PRUNEKIT) compress --model default --calib default --ratio 0.2 --out $(RUNS)/demo/pruned-20 --force

test: setup
	$(PY) -m pytest

# Mechanics only (tiny random models): seconds.
test-fast: setup
	$(PY) -m pytest -m "not slow"

# Side-by-side method comparison at 20% and 40% on the default model (tens of minutes on 2 cores).
compare: setup
	$(PRUNEKIT) compare --ratios 0.2,0.4 --out $(RUNS)/compare

clean:
	rm -rf $(RUNS) .pytest_cache
