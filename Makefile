# layercut: `make demo` runs the whole pipeline on the built-in textures set; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= layercut-data/demo

.PHONY: setup demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/layercut run --data textures --arch vgg11 --image-size 64 --out $(OUT)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/analyze.py
	$(PY) bench/train.py

clean:
	rm -rf $(VENV) layercut-data .pytest_cache
