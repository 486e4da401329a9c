PYTHON ?= .venv/bin/python

.PHONY: crds lint typecheck test-unit test test-fast venv

venv:  ## create or refresh .venv (every target below does this first)
	@hack/venv

crds: venv  ## regenerate crds/ and the chart's CRDs from the pydantic models
	$(PYTHON) -m mlkube.api.crdgen

lint: venv
	$(PYTHON) -m ruff check operator tests benchmarks hack
	$(PYTHON) -m ruff format --check operator tests benchmarks hack
	$(PYTHON) -c "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())" pyproject.toml

typecheck: venv
	$(PYTHON) -m mypy

test-unit: venv
	$(PYTHON) -m pytest -m unit -q

test:  ## the README's test command: lint, types, unit, runtime and integration tiers (brings a cluster up)
	hack/test

test-fast: venv  ## no cluster: lint, types, unit and runtime tiers
	$(PYTHON) -m ruff check operator tests benchmarks hack
	$(PYTHON) -m mypy
	$(PYTHON) -m pytest -m "unit or runtime" -q
