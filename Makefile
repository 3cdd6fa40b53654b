# Two entry points: `make demo` (the main job) and `make test` (the suite).
# Both create .venv on first use and install gupsim into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo matrix test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gupsim demo

# the whole selftest matrix (every mTHP size, swapped kinds) on the model and this kernel
matrix: $(STAMP)
	$(BIN)/gupsim live --full-matrix --summary

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/mypy src
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_memory.py
	$(BIN)/python benchmarks/bench_pin.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
