# The two commands of the README: `make demo` (the main job on the embedded sample) and `make test`.
# Both create and use the local virtualenv $(VENV); nothing is installed outside it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The locked install (README "Installing"): requirements.lock, then torch, then one DALI build's lock.
# torch is pinned by version only, in the lock's header (its build differs per box); TORCH=... overrides.
# On machines where pip is pointed at a CPU build, pip takes that one; elsewhere PyPI's.
TORCH ?= $(shell sed -n 's/^\# torch: //p' requirements.lock)
# DALI's build: DALI_CUDA=12 or 13, else the installed torch's CUDA major picks it (tools/dali_build.py;
# a CPU torch takes the CUDA 13 build, whose CPU operators run without a driver). Setting DALI_CUDA
# reinstalls, so that `make install DALI_CUDA=12` switches an existing environment.
DALI_CUDA ?=
LOCKS := requirements.lock requirements-dali-cuda120.lock requirements-dali-cuda130.lock
DEMO ?= out/demo

.PHONY: install demo test test-all test-docker lint clean wheelhouse lock FORCE

# --no-deps: the locks hold every dependency (hash-checked), so pip resolves nothing; torch comes after
# requirements.lock so that its own pure-Python dependencies are already the locked ones. The last
# line fails the install if anything ended up off the lock.
$(BIN)/.installed: pyproject.toml $(LOCKS) $(if $(DALI_CUDA),FORCE)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --require-hashes --no-deps -r requirements.lock
	$(BIN)/pip install -q "$(TORCH)"
	DALI_CUDA=$(DALI_CUDA) $(BIN)/python -m tools.dali_build --install
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/python -m tools.requirements check --torch "$(TORCH)"
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

# CI's command: every test but the heavy ones (4 processes, or a minute and more, on 2 cores) and
# the GPU ones; -rs prints why anything was skipped (the compose stack without a Docker engine).
test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -q -rs -m "not heavy and not gpu"

test-all: install
	$(BIN)/pytest -q -m ""

lint: install
	$(BIN)/ruff check .

# Every locked wheel the project needs except torch (and torch's CUDA libraries), for a GPU node without
# a package index: run this where pip reaches one, copy $(WHEELHOUSE) over, then there
#   pip install --no-index --find-links $(WHEELHOUSE) --require-hashes --no-deps -r $(WHEELHOUSE)/requirements.txt
# The list is requirements.lock plus the node's DALI build's lock, for the node's Python (markers are
# evaluated here for PY_VERSION: pip download would evaluate them for the Python running it). Set
# DALI_CUDA=12 or 13 for the node's driver (README "Installing"); unset, this environment's torch picks.
# --no-deps: the lock lists every dependency, so torch never comes in; the check below fails if it
# ever does. pip takes --platform tags literally (it widens only manylinux2014/2010 to older tags), so
# every glibc tag up to 2.28 is named: torch's own Linux wheels need glibc 2.28, so a box that runs
# them takes all of these.
WHEELHOUSE ?= wheelhouse
PY_VERSION ?= $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
PLATFORMS ?= manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_24_x86_64 \
	manylinux2014_x86_64
wheelhouse:
	mkdir -p $(WHEELHOUSE)
	DALI_CUDA=$(DALI_CUDA) $(PYTHON) -m tools.gpu_check --requirements --python-version $(PY_VERSION) \
		> $(WHEELHOUSE)/requirements.txt
	$(PYTHON) -m pip download --no-deps --require-hashes --only-binary=:all: --python-version $(PY_VERSION) \
		$(PLATFORMS:%=--platform %) --dest $(WHEELHOUSE) -r $(WHEELHOUSE)/requirements.txt
	@! ls $(WHEELHOUSE) | grep -iE '^(torch|triton)-' || { echo "wheelhouse: torch came in" >&2; exit 1; }
	@echo "$(WHEELHOUSE): $$(ls $(WHEELHOUSE)/*.whl | wc -l) wheels for Python $(PY_VERSION)"

# Refresh the locks from pyproject.toml after changing its dependencies (README "Installing"), then
# commit them; `make install` reinstalls from them. uv is pinned, in an environment of its own so that
# the project's stays exactly the lock's. TORCH=torch==X.Y.Z moves torch's pin.
UV ?= uv==0.13.9
LOCK_VENV ?= .venv-lock
lock:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q "$(UV)"
	$(PYTHON) -m tools.requirements lock --uv $(LOCK_VENV)/bin/uv --torch "$(TORCH)"

clean:
	rm -rf $(VENV) $(LOCK_VENV) out

# The real compose stack (build, prep, train 1 epoch, report, TensorBoard, stop and resume) where a Docker
# engine runs; skipped otherwise. ALEXNET_BASE_IMAGE=... for a base image built with docker/local-base.sh.
test-docker: install
	$(BIN)/pytest -q -s -m slow tests/test_compose_stack.py
