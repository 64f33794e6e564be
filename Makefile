# The README's two commands: `make demo` (set up, then train BNN on MNIST at quick scale) and
# `make test`. Everything installs into .venv; torch is the CPU build on machines without a GPU.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED_DATA := $(abspath ../shared/data)
# The data root: $BNNREPRO_DATA if set, else ../shared/data when it exists, else the per-user cache.
export BNNREPRO_DATA ?= $(if $(wildcard $(SHARED_DATA)/MNIST),$(SHARED_DATA),)
SCALE ?= quick
SEEDS ?= 0,1,2

.PHONY: setup demo smoke test test-all bench clean help

help:
	@echo "make setup   create .venv with torch (CPU build without a GPU) and bnnrepro"
	@echo "make demo    setup, then train BNN (+paper=bnn) on MNIST at scale=$(SCALE)"
	@echo "make test    the default test suite (slow tests excluded)"
	@echo "make test-all  every test, slow ones included"
	@echo "make bench   bit-packed kernel benchmarks vs torch float32"
	@echo "make tables / make table-<paper>   paper-vs-reproduced tables at SCALE (JOBS=2 THREADS=1 on 2 cores)"

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install_torch.sh
	$(PYTHON) -m venv $(VENV)
	scripts/install_torch.sh $(BIN)/pip
	$(BIN)/pip install -e '.[test]'
	touch $@

demo: setup
	$(BIN)/bnnrepro train +paper=bnn scale=$(SCALE)

smoke: setup
	$(BIN)/bnnrepro train +paper=bnn scale=smoke

test: setup
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m ''

bench: setup
	$(BIN)/bnnrepro bench

include scripts/tables.mk

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
