# mirrornet-tvm: the two commands a newcomer needs.
#   make demo   protect a model on Fashion-MNIST end to end
#   make test   run the test suite
# Both run scripts/setup.sh first (idempotent; no network work once everything is installed).
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= out/demo

.PHONY: setup demo test test-fast bench bench-quick docs tutorials clean

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh $(OUT)

test: setup
	$(PY) -m pytest -q -ra --durations=15 tests

test-fast: setup
	$(PY) -m pytest -q -ra -m "not slow and not qemu" tests

bench: setup
	$(PY) bench/run_all.py

bench-quick: setup
	$(PY) bench/run_all.py --quick

# Regenerate docs/cli.md and docs/api.md from the code (tests/test_docs.py checks they are current).
docs: setup
	$(PY) docs/gen_cli_reference.py
	$(PY) docs/gen_api_reference.py

# Regenerate tutorials/*.ipynb from tutorials/make_notebooks.py (outputs stripped).
tutorials: setup
	$(PY) tutorials/make_notebooks.py

clean:
	rm -rf build out .pytest_cache
