# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The lock: uv.lock, exact versions with their hashes for every platform (README: "Installs").
# pip installs its exports: requirements-dev.txt (make, CI) and requirements.txt (the image: the
# same versions without the dev and embedded extras).
LOCK := requirements-dev.txt
EXPORT = $(VENV)/bin/uv export --frozen --format requirements-txt --no-emit-project --no-header --group tools --quiet

.PHONY: run test test-fast bench lint migrate clean lock lock-upgrade

$(STAMP): pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PYTHON=...)")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

## Start the whole service: embedded Redis (unless REDIS_URL), migrations, web, worker, Flower.
run: $(STAMP)
	$(PY) -m balancer_project.launcher

## Run the whole test suite against a real Redis and real Celery workers.
test: $(STAMP)
	$(PY) -m pytest

## The tests that start no process (web, workers, a launcher): seconds, for the edit-test loop.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not live"

## Benchmarks (numbers go into docs/benchmarks.md).
bench: $(STAMP)
	$(PY) -m tests.bench

## Static checks: the lock file matches pyproject.toml, ruff, mypy (Django and DRF plugins), and the import contracts between the layers
## (pyproject: tool.mypy, tool.importlinter).
lint: $(STAMP)
	@$(VENV)/bin/uv lock --check --quiet || { echo "uv.lock does not match pyproject.toml: run make lock"; exit 1; }
	@$(EXPORT) --extra dev --extra embedded -o $(VENV)/export-check && cmp -s requirements-dev.txt $(VENV)/export-check \
		&& $(EXPORT) -o $(VENV)/export-check && cmp -s requirements.txt $(VENV)/export-check \
		|| { echo "requirements*.txt are not uv.lock's exports: run make lock"; exit 1; }
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

## Lock again after a change to pyproject.toml's dependencies (versions already locked stay where
## the new ranges allow them), and write the requirements files pip installs from the lock.
lock: $(STAMP)
	$(VENV)/bin/uv lock --quiet
	$(EXPORT) --extra dev --extra embedded -o requirements-dev.txt
	$(EXPORT) -o requirements.txt

## Upgrade every locked version to the newest its range allows; commit it on its own, with `make test` passing.
lock-upgrade: $(STAMP)
	$(VENV)/bin/uv lock --quiet --upgrade
	$(EXPORT) --extra dev --extra embedded -o requirements-dev.txt
	$(EXPORT) -o requirements.txt

migrate: $(STAMP)
	$(PY) manage.py migrate

clean:
	rm -rf $(VENV) var
