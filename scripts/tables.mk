# Paper-vs-reproduced tables (included by the Makefile, which defines BIN, SCALE and SEEDS and
# exports BNNREPRO_DATA). Each target reuses completed runs, resumes interrupted ones, launches the
# missing seeds of every row that can run here as a Hydra multirun, then rewrites
# $(RESULTS)/<paper>_<table>.{md,csv,tex}, $(RESULTS)/figures/ and the counted runs' records $(RESULTS)/runs/.
# SEEDS empty: each table's own seeds (0,1,2 unless its target says otherwise). A second call with nothing new
# trains nothing. Rows that cannot run here (no data, GPU-only at this scale) stay in the tables.
#   JOBS     parallel training jobs (Hydra's joblib launcher when > 1)
#   THREADS  torch threads per job; on 2 cores: JOBS=2 THREADS=1, or JOBS=1 THREADS=2
#   TABLE_FLAGS=--no-train   rebuild from the existing runs only
JOBS ?= 1
THREADS ?= 1
RESULTS ?= results
TABLE_FLAGS ?=
TABLE = $(BIN)/bnnrepro table scale=$(SCALE) $(if $(SEEDS),seed=$(SEEDS)) --jobs $(JOBS) train.num_threads=$(THREADS) \
	--out $(RESULTS) $(TABLE_FLAGS)

.PHONY: tables table-bnn table-qnn table-dorefa table-merolla

# one process for all papers: rows shared by two papers (QNN's Table 1 reuses BNN's presets) run once
tables: setup
	$(TABLE) all

table-bnn: setup
	$(TABLE) bnn

table-qnn: setup
	$(TABLE) qnn

table-dorefa: setup
	$(TABLE) dorefa

table-merolla: setup
	$(TABLE) merolla
