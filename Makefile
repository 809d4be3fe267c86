# The two commands that do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint typecheck unit bench clean

$(STAMP): pyproject.toml setup.py $(wildcard engine/*/*.[ch] engine/*/*/*.c clients/python/moldau/*.c)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m grpc_api --listen 127.0.0.1:7654 --tcp-listen 127.0.0.1:7655 --data-dir ./moldau-data --metrics-listen 127.0.0.1:9654

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(VENV)/bin/pytest -q

test: lint typecheck unit
	$(VENV)/bin/pytest -q benchmarks --benchmark-disable -p no:cacheprovider

bench: $(STAMP)
	$(VENV)/bin/pytest benchmarks --benchmark-only --benchmark-columns=min,median,max,rounds

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
