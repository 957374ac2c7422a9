# Set-up, tests and the quickstart job. Everything runs inside .venv; torch is installed first, at the tested
# version, and constraints.txt pins it for every later step.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: setup quickstart test test-slow lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt torch torchvision
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# The main job: the model table (params, MACs) and a quick CPU latency check of a few models.
quickstart: setup
	$(BIN)/mobilevit list --macs
	$(BIN)/mobilevit bench mobilevit_xxs mobilevitv2_050 mobilevitv3_xxs --batch-sizes 1 --repeats 10

test: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/bench_mobilevit.py
	$(BIN)/python benchmarks/bench_reparam.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
