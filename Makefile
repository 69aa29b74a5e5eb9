# The two commands of the README: `make demo` (the main job on the embedded sample) and `make test`.
# Both create and use the local virtualenv $(VENV); nothing is installed outside it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.13.0: on these CPU-only machines pip takes the CPU build lying on disk; elsewhere PyPI's.
TORCH ?= torch==2.13.0
DEMO ?= out/demo

.PHONY: install demo test test-all test-docker lint clean wheelhouse

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/.installed

# The main job on the embedded sample: make the data, shard it, compute its statistics, verify,
# train a few epochs (10-crop evaluation at the end), then draw the curves and write the summary.
# --init kaiming: the paper's N(0, 0.01) init does not move in a few CPU epochs (see README).
# Rerunning continues: the sample and shards are kept, and training resumes from its checkpoint.
DEMO_EPOCHS ?= 6
demo: install
	$(BIN)/alexnet-prep sample --out $(DEMO)/ILSVRC2012 --classes 10 --train-per-class 40 --val-per-class 10
	$(BIN)/alexnet-prep shard --src $(DEMO)/ILSVRC2012 --out $(DEMO)/shards --shard-size 100
	$(BIN)/alexnet-prep pca-stats --shards $(DEMO)/shards
	$(BIN)/alexnet-prep verify --shards $(DEMO)/shards
	$(BIN)/alexnet-train --shards $(DEMO)/shards --out $(DEMO)/run --epochs $(DEMO_EPOCHS) --batch-size 32 \
		--init kaiming --log-every 4 $(if $(wildcard $(DEMO)/run/checkpoints/*),--resume,) \
		--note "demo on the 10-class synthetic sample: a few CPU epochs, so kaiming init and batch 32"
	$(BIN)/alexnet-report $(DEMO)/run
	@echo "summary: $(DEMO)/run/summary.md, curves: $(DEMO)/run/curves.png"

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -q

test-all: install
	$(BIN)/pytest -q -m ""

lint: install
	$(BIN)/ruff check .

# Every wheel the project needs except torch (and torch's own dependencies), for a GPU node without
# a package index: run this where pip reaches one, copy $(WHEELHOUSE) over, then there
#   pip install --no-index --find-links $(WHEELHOUSE) -r $(WHEELHOUSE)/requirements.txt
# No project dependency but torch itself needs torch, so resolving the list below never fetches it;
# the check below fails if that ever changes. pip takes --platform tags literally (it widens only
# manylinux2014/2010 to older tags), so every glibc tag up to 2.28 is named: torch's own Linux
# wheels need glibc 2.28, so a box that runs them takes all of these.
WHEELHOUSE ?= wheelhouse
PY_VERSION ?= $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
PLATFORMS ?= manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_24_x86_64 \
	manylinux2014_x86_64
wheelhouse:
	mkdir -p $(WHEELHOUSE)
	$(PYTHON) -m tools.gpu_check --requirements > $(WHEELHOUSE)/requirements.txt
	$(PYTHON) -m pip download --only-binary=:all: --python-version $(PY_VERSION) $(PLATFORMS:%=--platform %) \
		--dest $(WHEELHOUSE) -r $(WHEELHOUSE)/requirements.txt
	@! ls $(WHEELHOUSE) | grep -iE '^(torch|triton)-' || { echo "wheelhouse: torch came in" >&2; exit 1; }
	@echo "$(WHEELHOUSE): $$(ls $(WHEELHOUSE)/*.whl | wc -l) wheels for Python $(PY_VERSION)"

clean:
	rm -rf $(VENV) out

# The real compose stack (build, prep, train 1 epoch, report, TensorBoard, stop and resume) where a Docker
# engine runs; skipped otherwise. ALEXNET_BASE_IMAGE=... for a base image built with docker/local-base.sh.
test-docker: install
	$(BIN)/pytest -q -s -m slow tests/test_compose_stack.py
