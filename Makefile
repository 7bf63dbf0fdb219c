# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create the virtual environment when it is missing.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STUDY ?= ablations/demo.toml
RUNS ?= runs

.PHONY: demo test setup clean

$(BIN)/ablate: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(BIN)/ablate

setup: $(BIN)/ablate

demo: setup
	$(BIN)/ablate plan $(STUDY)
	$(BIN)/ablate run $(STUDY) --runs $(RUNS)
	$(BIN)/ablate analyze $(STUDY) --runs $(RUNS)

test: setup
	$(BIN)/python -m pytest -q --timeout=900 --durations=10

clean:
	rm -rf $(RUNS)
