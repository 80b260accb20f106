# mirrornet-tvm: the two commands a newcomer needs.
#   make demo   protect a model on Fashion-MNIST end to end
#   make test   run the test suite
# Both run scripts/setup.sh first (idempotent; no network work once everything is installed).
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= out/demo

.PHONY: setup demo test test-fast bench clean

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

clean:
	rm -rf build out .pytest_cache
