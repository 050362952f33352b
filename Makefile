# Two entry points, each usable on a fresh machine with only Python 3.10+:
#   make quickstart   train + evaluate tiny models on synthetic data (CPU, minutes)
#   make test         the test suite (what CI runs)
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

.PHONY: install quickstart test
