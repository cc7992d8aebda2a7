# seqmodels: `make help` lists the targets. Paths are the checkout's, so `make -f path/Makefile`
# works from any directory; training and TensorBoard use ./logs of the directory you are in.
ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
VENV ?= $(ROOT)/.venv
PYTHON ?= python3
# The CPU build of torch; override for a CUDA machine, e.g. `make install TORCH=torch`.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
ARGS ?=

# A copy of the datasets beside this checkout (as in this project's own runs and CI) is used
# when present; otherwise data goes to ./data and is downloaded there.
ifneq ($(wildcard $(ROOT)/../shared/data),)
export SEQMODELS_DATA_DIR ?= $(abspath $(ROOT)/../shared/data)
endif

.PHONY: help install train test test-all lint format tensorboard bench device-wheels clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(BIN)/.installed: $(ROOT)/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e "$(ROOT)[dev]"
	touch $@

install: $(BIN)/.installed ## Create .venv and install seqmodels with its dev tools

train: install ## Train the default experiment (SST-2 BiLSTM); extra overrides: ARGS="..."
	$(BIN)/seqmodels-train experiment=sst2_bilstm $(ARGS)

# Tests use tiny models, for which one thread per process is as fast as two, and immune to the
# OpenMP spin-wait collapse that two busy processes on two cores suffer: so one test process
# per core (pytest-xdist), each file's tests in one of them, in order (the README test's
# commands build on each other).
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
test: install ## Run the test suite (without slow tests)
	cd $(ROOT) && OMP_NUM_THREADS=1 $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow" -q $(ARGS)

test-all: install ## Run every test, slow ones included
	cd $(ROOT) && OMP_NUM_THREADS=1 $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile -q $(ARGS)

lint: install ## Check style with ruff
	cd $(ROOT) && $(BIN)/ruff check src tests scripts

format: install ## Format and fix what ruff can
	cd $(ROOT) && $(BIN)/ruff check --fix src tests scripts
	cd $(ROOT) && $(BIN)/ruff format src tests scripts

# On this machine only (TensorBoard's default): logs, configs and sample texts are not served
# to the network. From a laptop: ssh -L 6006:localhost:6006 <this machine>. To serve every
# interface on purpose: make tensorboard ARGS=--bind_all.
tensorboard: install ## Watch every run under logs/ in TensorBoard, on this machine only
	$(BIN)/tensorboard --logdir logs $(ARGS)

bench: install ## Run the benchmarks and rewrite docs/benchmarks.md
	cd $(ROOT) && $(BIN)/python scripts/benchmark.py $(ARGS)

device-wheels: install ## Fill .device_carry/ (Hydra wheels, data) for scripts/device_check.sh on a GPU
	cd $(ROOT) && PYTHON=$(BIN)/python bash scripts/device_check.sh --fetch-wheels

clean: ## Remove caches (keeps .venv and logs)
	cd $(ROOT) && rm -rf .pytest_cache .ruff_cache .hypothesis
	cd $(ROOT) && find . -name __pycache__ -type d -prune -exec rm -rf {} +
