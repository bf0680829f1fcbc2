# layercut: `make demo` runs the whole pipeline (ResNet-18 on the built-in digits set, cut by the accuracy budget);
# `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= layercut-demo

.PHONY: setup demo test lint bench browser clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet 'setuptools>=77'
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/layercut run --data digits --arch resnet18 --image-size 32 --epochs 6 --out $(OUT)

test: setup lint
	$(PY) -m pytest -q

# Lint, format, types of the contracts, and the layering (import-linter reads the installed layout, so it
# runs on a copy of the package built into build/lint-site; pyproject.toml holds every rule).
LINT_SITE := build/lint-site
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	rm -rf $(LINT_SITE) build/lib  # build/lib: setuptools' staging folder, which would ship stale modules
	$(PY) -m pip install --quiet --no-deps --no-build-isolation --no-compile --target $(LINT_SITE) .
	cd $(LINT_SITE) && PYTHONPATH=. $(abspath $(VENV))/bin/lint-imports $(CURDIR)/pyproject.toml
	cd $(LINT_SITE) && PYTHONPATH=. $(abspath $(VENV))/bin/mypy --config-file $(CURDIR)/pyproject.toml

# Debian's Chromium and ChromeDriver, for the dashboard's browser test (needs root or sudo).
browser:
	$$(command -v sudo || true) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $$(command -v sudo || true) apt-get install -y -qq chromium chromium-driver

bench: setup
	$(PY) bench/analyze.py
	$(PY) bench/train.py

clean:
	rm -rf $(VENV) layercut-demo layercut-run .pytest_cache build
