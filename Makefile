# Two commands on a fresh machine:
#   make demo   — create .venv, install, run the embedded CPU demo (`torchrun grpo/train.py`)
#   make test   — create .venv, install with test extras, run pytest
# TORCH is the CPU build by default (fast, no CUDA download); on a GPU machine: make demo TORCH=torch
VENV  ?= .venv
PY    := $(VENV)/bin/python
TORCH ?= torch==2.13.0

$(VENV)/.installed: setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/torchrun --standalone --nproc_per_node=1 grpo/train.py

test: $(VENV)/.installed
	$(PY) -m pytest -q

.PHONY: install demo test
