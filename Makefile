PYTHON ?= .venv/bin/python

.PHONY: crds lint typecheck test-unit test

crds:  ## regenerate crds/ and the chart's CRDs from the pydantic models
	$(PYTHON) -m mlkube.api.crdgen

lint:
	$(PYTHON) -m ruff check operator tests benchmarks
	$(PYTHON) -m ruff format --check operator tests benchmarks

typecheck:
	$(PYTHON) -m mypy

test-unit:
	$(PYTHON) -m pytest -m unit -q

test:  ## every tier that runs here: lint, types, unit and runtime tests
	$(PYTHON) -m ruff check operator tests benchmarks
	$(PYTHON) -m mypy
	$(PYTHON) -m pytest -m "unit or runtime" -q
