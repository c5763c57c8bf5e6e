# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create (or reuse) .venv, install the CPU torch wheel first so nothing pulls CUDA torch,
# then this package with its dev extra.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH_VERSION ?= 2.13.0
PROFILE ?= toy

.PHONY: setup test demo demo-seeds bench lint colab-links clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/orion run --profile $(PROFILE)

# The toy demo over seeds 0, 1, 2 (configs/toy3.yaml, about three times `make demo`): outputs/toy3/report.md
demo-seeds: setup
	$(BIN)/orion run --profile toy3

bench: setup
	for f in bench/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

# REPO=OWNER/NAME: the GitHub repository (or fork) the Colab links and install cells point at
colab-links: setup
	$(BIN)/orion colab-links $(if $(REPO),--repo $(REPO),)

lint: setup
	$(BIN)/ruff check orion_utils tests bench

clean:
	rm -rf $(VENV) outputs/*/
