# Two entry points: `make demo` (the main job) and `make test` (the suite).
# Both create .venv on first use and install gupsim into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo matrix test test-deps lint bench fuzz clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gupsim demo

# the whole selftest matrix (every mTHP size, swapped kinds) on the model and this kernel
matrix: $(STAMP)
	$(BIN)/gupsim live --full-matrix --summary

# Debian's chromium and prometheus for the browser and Prometheus-server tests: installed
# only when absent and only as root with apt-get; elsewhere those tests skip with the reason.
test-deps:
	@if { [ ! -x /usr/bin/chromium ] || ! command -v prometheus >/dev/null; } \
	    && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "make: installing chromium and prometheus (Debian packages) for the tests"; \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
		    --no-install-recommends chromium prometheus; } >/dev/null \
		|| echo "make: could not install them; their tests will skip"; \
	fi

test: $(STAMP) test-deps
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/mypy src
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_memory.py
	$(BIN)/python benchmarks/bench_pin.py

# The long differential campaign: 300 random programs on the model and this kernel.
# Shrunk findings go to fuzz-findings/ (exit 1 if there are any).
FUZZ_SEED ?= 1
fuzz: $(STAMP)
	$(BIN)/gupsim fuzz --seed $(FUZZ_SEED) --programs 300 --out fuzz-findings

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
