# Two commands on a fresh machine: `make demo` and `make test`. Each builds .venv the first time.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow test-ui bench bench-large bench-real lint format lock clean-venv

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip "setuptools==80.9.0" wheel
	# the lock pins every package exactly; --no-deps installs precisely that set
	$(BIN)/python -m pip install -q --no-deps -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m relcast.demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

test-ui: $(STAMP)
	@test -x /usr/bin/chromium || (apt-get update -q && apt-get install -y -q chromium chromium-driver)
	$(BIN)/python -m pip install -q -e '.[app]'
	$(BIN)/python -m pytest -m ui

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]' torch==2.13.0
	$(BIN)/python -m benchmarks.run_all

# The whole pipeline on the 1,026 NASDAQ stocks of the relational-ranking benchmark (../shared/data)
bench-real: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]' torch==2.13.0
	$(BIN)/python -m benchmarks.real_nasdaq

# Stage1 cost vs N (100/1,000/3,000 stocks) and Stage3 from a 15 GB memory-mapped store (~15 min);
# the whole run in 1 vs 2 processes under torchrun (benchmarks/scale_out.py); Stage1 dates/s and
# the out-of-fold store at 1,026 stocks (benchmarks/stage1_scale.py, ~15 min)
bench-large: $(STAMP)
	$(BIN)/python -m benchmarks.scale_large
	$(BIN)/python -m benchmarks.scale_out
	$(BIN)/python -m benchmarks.stage1_scale

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

# Regenerate the lock after changing dependencies in pyproject.toml (needs a working .venv).
lock:
	$(BIN)/python -m pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu/torch==\1/' > requirements.lock

clean-venv:
	rm -rf $(VENV)
