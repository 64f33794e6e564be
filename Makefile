# The README's two commands: `make demo` (set up, then train BNN on MNIST at quick scale) and
# `make test`. Everything installs into .venv; torch is the CPU build on machines without a GPU.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED_DATA := $(abspath ../shared/data)
# The data root: $BNNREPRO_DATA if set, else ../shared/data when it exists, else the per-user cache.
export BNNREPRO_DATA ?= $(if $(wildcard $(SHARED_DATA)/MNIST),$(SHARED_DATA),)
SCALE ?= quick
SEEDS ?=

.PHONY: setup demo smoke test test-all test-faults bench pareto bench-train clean help study-merolla quant-grid fashion-mnist bitflip-packed

help:
	@echo "make setup   create .venv with torch (CPU build without a GPU) and bnnrepro"
	@echo "make demo    setup, then train BNN (+paper=bnn) on MNIST at scale=$(SCALE)"
	@echo "make test    the default test suite (slow tests excluded)"
	@echo "make test-all  every test, slow ones included"
	@echo "make test-faults  kill/resume, full disk, concurrent runs, corrupt files, bad inputs; prints a tally"
	@echo "make bench   bit-packed kernel benchmarks vs torch fp32, bf16, int8 -> results/kernels.md"
	@echo "make bench-train  a training step of each protocol vs a float net -> results/train_speed.md"
	@echo "make pareto  the MNIST quant grid: error x packed latency x size -> results/pareto_mnist.md"
	@echo "make study-merolla   Merolla et al. robustness study on MNIST and Fashion-MNIST (bnnrepro table merolla_study: 36 nets + sweeps)"
	@echo "make bitflip-packed  bit errors in the packed weight bits of BNN MNIST nets (bnnrepro table bitflip_packed)"
	@echo "make quant-grid   DoReFa/QNN (W,A,G) grid on MNIST (bnnrepro table quant_grid: quick scale, 2 seeds) -> results/quant_grid_mnist.md"
	@echo "make tables / make table-<paper>   paper-vs-reproduced tables at SCALE (JOBS=2 THREADS=1 on 2 cores)"

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install_torch.sh
	$(PYTHON) -m venv $(VENV)
	scripts/install_torch.sh $(BIN)/pip
	$(BIN)/pip install -e '.[test,slurm]'
	touch $@

# train.precision=auto: the +-1 layers' exact low-precision matmuls where the CPU has bf16 hardware
demo: setup
	$(BIN)/bnnrepro train +paper=bnn scale=$(SCALE) train.precision=auto

smoke: setup
	$(BIN)/bnnrepro train +paper=bnn scale=smoke

test: setup
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m ''

FAULT_TESTS := tests/test_faults.py tests/test_bad_inputs.py tests/test_hostile.py tests/test_run_lock.py \
	tests/test_disk_full.py tests/test_artifact_integrity.py \
	tests/test_train.py::test_truncated_last_checkpoint_falls_back_to_previous \
	tests/test_train.py::test_nan_loss_stops_naming_epoch_and_step
test-faults: setup
	$(BIN)/python -m pytest -q $(FAULT_TESTS)

bench: setup
	$(BIN)/bnnrepro bench --variants --out results --json results/kernels.json

pareto: setup
	$(BIN)/bnnrepro bench --pareto --out results

bench-train: setup
	$(BIN)/bnnrepro bench --train --out results

# Fashion-MNIST from Debian's package (the study's second dataset): installed when missing
fashion-mnist:
	@dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || apt-get install -y -qq dataset-fashion-mnist || \
	  sudo apt-get install -y -qq dataset-fashion-mnist || \
	  { echo "make: could not install dataset-fashion-mnist (apt-get install dataset-fashion-mnist)"; exit 1; }

study-merolla: setup fashion-mnist
	$(TABLE) merolla_study

bitflip-packed: setup
	$(TABLE) bitflip_packed

quant-grid: setup
	$(TABLE) quant_grid

include scripts/tables.mk

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
