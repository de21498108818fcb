# sparsetrain: `make train` runs the main job, `make test` the tests. Both set everything up first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
ARCH := $(shell uname -m)
# Torch first, from this machine kind's wheels (x86_64: CUDA build that also runs on CPU; aarch64: CPU build).
ifeq ($(ARCH),aarch64)
TORCH_SPEC ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
endif
FMNIST_SYSTEM := /usr/share/datasets/fashion-mnist
ARGS ?=
# pytest-xdist processes for `make test` / `make test-all` (TEST_WORKERS=0: all in this process)
TEST_WORKERS ?= 2

.PHONY: setup data train test test-all lint format clean study study-report

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev,sweep,plot]"
	@$(PY) -c "import torch; print('sparsetrain setup done: torch', torch.__version__)"
	@touch $@

# Fashion-MNIST: data/fashion_mnist, else the Debian package (installed here when apt is usable), else download.
data:
	@if ls data/fashion_mnist/train-images-idx3-ubyte.gz >/dev/null 2>&1 || ls $(FMNIST_SYSTEM)/train-images-idx3-ubyte.gz >/dev/null 2>&1; then \
		echo "Fashion-MNIST found"; \
	elif command -v apt-get >/dev/null && { [ "$$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then \
		echo "installing Debian package dataset-fashion-mnist"; \
		$$([ "$$(id -u)" = 0 ] || echo sudo) apt-get install -y -q dataset-fashion-mnist >/dev/null || \
		{ $$([ "$$(id -u)" = 0 ] || echo sudo) apt-get update -q >/dev/null && $$([ "$$(id -u)" = 0 ] || echo sudo) apt-get install -y -q dataset-fashion-mnist >/dev/null; }; \
	else \
		echo "Fashion-MNIST not installed: run 'sudo apt-get install dataset-fashion-mnist' or put the four idx .gz files in data/fashion_mnist (training will try torchvision's download)"; \
	fi

# The main job: GraNet at 90 % sparsity, ResNet-20, Fashion-MNIST, 3 epochs (~3-6 min of training on 2 CPU cores).
train: setup data
	$(PY) train.py +pruner=granet $(ARGS)

# A study: its sweeps (conf/experiment/$(STUDY)*.yaml, its dense sweep first: a sweep may start from its runs;
# finished jobs are skipped, an interrupted one resumes),
# then its CSV, figures and the README's tables. `make study STUDY=unstructured`
STUDY ?= unstructured
study: setup data
	@[ -n "$$(cd conf/experiment && ls $(STUDY).yaml $(STUDY)_*.yaml 2>/dev/null)" ] || { echo "error: no study $(STUDY): no conf/experiment/$(STUDY).yaml or $(STUDY)_*.yaml (studies: unstructured, structured, family, gpu_unstructured)"; exit 2; }
	@for exp in $$(cd conf/experiment && { ls $(STUDY)_dense.yaml; ls $(STUDY).yaml $(STUDY)_*.yaml; } 2>/dev/null | sed 's/\.yaml$$//' | awk '!seen[$$0]++'); do \
		$(PY) train.py -m experiment=$$exp $(ARGS) || exit 1; done
	$(MAKE) study-report STUDY=$(STUDY)

# An IMP run's rounds are tested from its snapshots (rounds.json) before the CSV is collected.
study-report: setup
	@for run in experiments/studies/$(STUDY)/runs/imp_*_seed*; do \
		if [ -f "$$run/results.json" ] && [ ! -f "$$run/rounds.json" ]; then $(PY) -m experiments.studies.imp_rounds "$$run" || exit 1; fi; done
	$(PY) -m sparsetrain.sweep_summary experiments/studies/$(STUDY)/runs
	$(PY) -m experiments.studies.plot $(STUDY)
	$(PY) -m experiments.studies.tables
	@if ls experiments/studies/$(STUDY)/runs/dense_seed*/results.json >/dev/null 2>&1 && [ -f conf/experiment/$(STUDY)_dense.yaml ]; then \
		$(PY) -m experiments.studies.dense_reference $(STUDY); fi

test: setup
	$(PY) -m pytest -m "not slow" -q -n $(TEST_WORKERS)

test-all: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf outputs multirun .pytest_cache
