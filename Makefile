# Two set-up commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
ifeq ($(OS),Windows_NT)
BIN := $(VENV)/Scripts
else
BIN := $(VENV)/bin
endif
PY  := $(BIN)/python
PIP := $(PY) -m pip
# torch must come from the CPU wheel pinned here before any extra that asks for torch,
# otherwise pip resolves a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test venv lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed-demo: pyproject.toml | $(PY)
	$(PIP) install --quiet -e ".[cpu]"
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PIP) install --quiet "$(TORCH_PIN)"
	$(PIP) install --quiet -e ".[cpu,dev,train,export,bench,bioimageio,dask,zarr,napari,napari-test]"
	@touch $@

venv: $(VENV)/.installed-test

demo: $(VENV)/.installed-demo
	$(BIN)/cyclesr demo

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(PY) -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
