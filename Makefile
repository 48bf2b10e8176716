# Two commands do all set-up on a fresh machine with Python 3.10+:
#   make demo       creates .venv if missing, installs paged_kv, runs the main job:
#                   the data-plane round trip, then the fragmentation study
#   make test       same environment, runs the whole suite (tests, compile check, notebooks)
# and the others use the same environment:
#   make lint       ruff over the package, the tests, the benchmarks and the scripts,
#                   and the import contracts (the layers) with import-linter
#   make bench      the kernel benchmarks (benchmarks/RESULTS.md has the numbers)
#   make gpu-check  on a machine with a GPU: a probe, the kernel tests, the benchmarks
#                   (docs/gpu.rst); no virtualenv, the machine's own python3
#   make docs       the documentation site, warnings as errors -> docs/_build/html
#                   (the notebooks shown as committed, never executed)
#   make notebooks  re-run every notebook at full size, in place, with its figures
#                   (NOTEBOOKS="04_block_map" for some; long: run it with nice)
#   make clean      removes the environment and every cache (Numba's compiled replay
#                   engine included, in __pycache__) and build
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.paged_kv-installed
NOTEBOOKS ?= $(basename $(notdir $(wildcard notebooks/*.ipynb)))

.PHONY: demo test lint bench gpu-check docs notebooks clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "paged_kv needs Python 3.10+")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,cuda,distributed,docs,hf]'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m paged_kv demo
	$(PY) -m paged_kv fragmentation --figure $${TMPDIR:-/tmp}/paged_kv_fragmentation.png

test: $(STAMP)
	PAGED_KV_NOTEBOOK_SIZE=small $(PY) -m pytest -v -n auto tests notebooks --nbmake

lint: $(STAMP)
	$(PY) -m ruff check paged_kv tests benchmarks scripts
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) benchmarks/kernels.py

gpu-check:
	bash scripts/gpu_check.sh

docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html
	@echo "documentation: docs/_build/html/index.html"

notebooks: $(STAMP)
	$(PY) scripts/run_notebooks.py $(NOTEBOOKS)

clean:
	rm -rf $(VENV) .venv-oldest .pytest_cache .hypothesis .ruff_cache docs/_build docs/notebooks paged_kv.egg-info
	find paged_kv tests benchmarks scripts notebooks -name __pycache__ -type d -prune -exec rm -rf {} +
