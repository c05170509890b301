# make test: create .venv if missing, install sd_ovopt with its test extra, run pytest.
# make demo: same set-up, then an offline end-to-end run (export -> generate -> PNG).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-slow demo lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	SD_OVOPT_SLOW=1 $(BIN)/python -m pytest -q -m slow

demo: $(STAMP)
	$(BIN)/sd-ovopt demo

lint: $(STAMP)
	$(BIN)/ruff check sd_ovopt tests scripts benchmarks examples
	$(BIN)/ruff format --check sd_ovopt tests scripts benchmarks examples

clean:
	rm -rf demo_output .pytest_cache .ruff_cache
