# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Exact versions with their hashes (README: "Installs"): what make and CI install. The image
# installs requirements/prod.lock, the same versions without the dev and embedded extras.
LOCK := requirements/dev.lock
COMPILE = $(VENV)/bin/uv pip compile pyproject.toml requirements/tools.in --universal --generate-hashes \
	--quiet --custom-compile-command "make lock"

.PHONY: run test bench lint migrate clean lock lock-upgrade

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

## Benchmarks (numbers go into README).
bench: $(STAMP)
	$(PY) -m tests.bench

## Static checks: the lock file matches pyproject.toml, ruff, mypy (Django and DRF plugins), and the import contracts between the layers
## (pyproject: tool.mypy, tool.importlinter).
lint: $(STAMP)
	@cp requirements/dev.lock $(VENV)/lock-check && $(COMPILE) --extra dev --extra embedded -o $(VENV)/lock-check \
		&& cmp -s requirements/dev.lock $(VENV)/lock-check \
		|| { echo "requirements/dev.lock does not match pyproject.toml: run make lock"; exit 1; }
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

## Compile the lock files again after a change to pyproject.toml's dependencies: versions already
## locked stay where the new ranges allow them.
lock: $(STAMP)
	$(COMPILE) --extra dev --extra embedded -o requirements/dev.lock
	$(COMPILE) -c requirements/dev.lock -o requirements/prod.lock

## Upgrade every locked version to the newest its range allows; commit it on its own, with `make test` passing.
lock-upgrade: $(STAMP)
	$(COMPILE) --extra dev --extra embedded --upgrade -o requirements/dev.lock
	$(COMPILE) -c requirements/dev.lock -o requirements/prod.lock

migrate: $(STAMP)
	$(PY) manage.py migrate

clean:
	rm -rf $(VENV) var
