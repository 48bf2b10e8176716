# Two commands do all set-up on a fresh machine with Python 3.10+:
#   make demo   creates .venv if missing, installs paged_kv, runs the main job:
#               the data-plane round trip, then the fragmentation study
#   make test   same environment, runs the whole suite (tests, compile check, notebooks)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.paged_kv-installed

.PHONY: demo test lint bench gpu-check clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "paged_kv needs Python 3.10+")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,cuda,distributed]'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m paged_kv demo
	$(PY) -m paged_kv fragmentation

test: $(STAMP)
	PAGED_KV_NOTEBOOK_SIZE=small $(PY) -m pytest -v tests notebooks --nbmake

lint: $(STAMP)
	$(PY) -m ruff check paged_kv tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/kernels.py

gpu-check: $(STAMP)
	bash scripts/gpu_check.sh

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
