# The two commands of the README: `make demo` (the main job on the embedded sample) and `make test`.
# Both create and use the local virtualenv $(VENV); nothing is installed outside it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.13.0: on these CPU-only machines pip takes the CPU build lying on disk; elsewhere PyPI's.
TORCH ?= torch==2.13.0
DEMO ?= out/demo

.PHONY: install demo test test-all lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/.installed

# The main job on the embedded sample: make the data, shard it, compute its statistics, verify.
demo: install
	$(BIN)/alexnet-prep sample --out $(DEMO)/ILSVRC2012 --classes 10 --train-per-class 40 --val-per-class 10
	$(BIN)/alexnet-prep shard --src $(DEMO)/ILSVRC2012 --out $(DEMO)/shards --shard-size 100
	$(BIN)/alexnet-prep pca-stats --shards $(DEMO)/shards
	$(BIN)/alexnet-prep verify --shards $(DEMO)/shards

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -q

test-all: install
	$(BIN)/pytest -q -m ""

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) out
