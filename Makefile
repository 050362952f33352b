# Two entry points, each usable on a fresh machine with only Python 3.10+:
#   make quickstart   train + evaluate tiny models on synthetic data (CPU, minutes)
#   make test         the test suite (what CI runs)
#   make baseline     re-run the quickstart and refresh its committed records (baselines/quickstart),
#                     which CI's `segbench check` compares against (see .ci/run)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

$(BIN)/segbench: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/segbench

quickstart: $(BIN)/segbench
	$(BIN)/segbench run suites/quickstart.yaml

test: $(BIN)/segbench
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

# The quickstart from scratch; its records (and the prediction previews they reference) become
# the baseline. One thread, as in .ci/run: the thread count changes float summation order and
# so the trained models (baselines/tolerances.yaml says by how much). Commit the result.
baseline: $(BIN)/segbench
	rm -rf results/quickstart
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/segbench run suites/quickstart.yaml --no-report
	rm -rf baselines/quickstart
	mkdir -p baselines/quickstart
	cp results/quickstart/*.json baselines/quickstart/
	cp -r results/quickstart/previews baselines/quickstart/
	$(BIN)/segbench check results/quickstart --baseline baselines/quickstart --tolerances baselines/tolerances.yaml
	@echo "baselines/quickstart refreshed: review (git diff --stat baselines), then commit"

.PHONY: install quickstart test baseline
