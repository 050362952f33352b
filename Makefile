# Two entry points, each usable on a fresh machine with only Python 3.10+:
#   make quickstart   train + evaluate tiny models on synthetic data (CPU, minutes)
#   make test         the test suite (what CI runs)
#   make baseline     re-run the quickstart and refresh its committed records (baselines/quickstart),
#                     which CI's `segbench check` compares against (see .ci/run)
#   make lock         re-resolve requirements.lock (every dependency, test extra included, pinned
#                     with hashes) from pyproject.toml's ranges and requirements-pins.txt
# The venv installs exactly requirements.lock (pip --require-hashes), then segbench itself without
# dependencies: the same versions on every machine, so the baseline's numbers can be reproduced.
# `pip install segbench` (users) still resolves pyproject.toml's ranges.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
UV     := uv==0.13.8

$(BIN)/segbench: pyproject.toml requirements.lock
	$(PYTHON) -m venv --clear $(VENV)  # exactly the lock: nothing left from an earlier install
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

# uv runs from a throw-away venv; --universal: one lock for every platform and Python >= 3.10
# (environment markers pick the right pins); after it, rebuild the venv and refresh the baseline.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet "$(UV)"
	.lock-venv/bin/uv pip compile pyproject.toml --extra test --universal --python-version 3.10 \
	    --generate-hashes --constraint requirements-pins.txt -o requirements.lock
	rm -rf .lock-venv

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
	cp results/quickstart/*.per_image.npz baselines/quickstart/  # for `segbench compare` against the baseline
	$(BIN)/segbench check results/quickstart --baseline baselines/quickstart --tolerances baselines/tolerances.yaml
	@echo "baselines/quickstart refreshed: review (git diff --stat baselines), then commit"

.PHONY: install quickstart test baseline lock
