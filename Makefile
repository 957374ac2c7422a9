# Set-up, tests and the quickstart job. Everything runs inside .venv; torch is installed first, at the tested
# version, and constraints.txt pins it for every later step.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: setup quickstart browser test test-slow test-all lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt torch torchvision
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# Real photos that ship inside scikit-image (a dev dependency).
PHOTOS = $(shell $(BIN)/python -c "import os, skimage; d = os.path.join(os.path.dirname(skimage.__file__), 'data'); print(' '.join(os.path.join(d, f) for f in ('chelsea.png', 'coffee.png', 'astronaut.png', 'rocket.jpg')))")
# Default pretrained model: from the Hugging Face cache (or downloaded when online). Apple's real MobileOne-S0 weights
# are used instead when the project's shared test data sits beside the checkout.
SHARED_S0 := $(wildcard ../shared/weights/mobileone_s0_reparam.safetensors)
DEMO_MODEL ?= $(if $(SHARED_S0),mobileone_s0.orig_in1k_reparam --pretrained $(SHARED_S0),mobilevit_xxs.cvnets_in1k)

# The main job: the model table (params, MACs), a quick CPU latency check, and real photos classified with real
# weights. Offline with no weights at hand, the last step says which file is missing and how to supply it.
quickstart: setup
	$(BIN)/mobilevit list --macs
	$(BIN)/mobilevit bench mobilevit_xxs mobilevitv2_050 mobilevitv3_xxs mobileone_s0 --batch-sizes 1 --repeats 10
	$(BIN)/mobilevit predict $(PHOTOS) --model $(DEMO_MODEL) --top-k 3 \
		|| echo "quickstart: classification skipped (no pretrained weights available here; see the message above)"

# Headless Chromium for the server page's browser test (Debian's package; needs root and apt). Where it cannot be
# installed the test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& (apt-get install -y -qq chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null 2>&1)) \
		|| echo "chromium not installed: the browser test will skip"; }

# The default suite checks one variant per family and block kind at small input sizes, and each export format on one
# or two models; test-slow runs what the default run leaves out (every variant, full sizes, every format and family:
# parity with timm and transformers, re-parameterization, export); test-all runs both.
# Each runs in one pytest-xdist worker per core (a test module stays in one worker), every worker on one intra-op
# thread (tests/conftest.py).
PYTEST := $(BIN)/python -m pytest -q -n auto --dist loadfile

test: setup browser
	$(BIN)/ruff check src tests benchmarks
	$(PYTEST)

test-slow: setup
	$(PYTEST) -m slow

test-all: setup browser
	$(PYTEST) -m ""

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/bench_mobilevit.py
	$(BIN)/python benchmarks/bench_reparam.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
