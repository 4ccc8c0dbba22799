# The README's two commands: `make demo` and `make test`.
# Everything runs in the project virtual environment that `make deps` (scripts/install-deps.sh)
# makes; images go where the harvester looks for them ($HPCAF_HOME/images, or HPCAF_IMAGE_CACHE).
HPCAF_VENV ?= .venv
PYTHON ?= $(abspath $(HPCAF_VENV))/bin/python

.PHONY: demo test deps lint typecheck unit image clean screenshots

deps:
	scripts/install-deps.sh test fit

image: deps
	$(PYTHON) -m harvester.cli image build containers/base.def --name base
	$(PYTHON) -m harvester.cli image build containers/pyhf.def --name pyhf

## demo: fit a real pallet end to end on the embedded defaults; prints the table and plot path
demo:
	scripts/install-deps.sh server fit
	scripts/demo.sh

## test: install what the tests need, then lint, type-check and run the test suite on
## each database of TEST_DATABASES (the second, on a throw-away PostgreSQL server on loopback,
## runs the tests whose outcome can depend on the database: tests/conftest.py)
TEST_DATABASES ?= sqlite postgresql
test: deps lint typecheck
	@failed=""; for db in $(TEST_DATABASES); do \
	  echo "== the test suite on $$db"; \
	  $(PYTHON) -m pytest -ra -q --durations=25 --database $$db $(PYTEST_ARGS) || failed="$$failed $$db"; \
	done; \
	if [ -n "$$failed" ]; then echo "== tests failed on:$$failed"; exit 1; fi

## lint: ruff, and the import contracts of pyproject.toml ([tool.importlinter]; the
## layers drawn in docs/architecture.md)
LINT_IMPORTS ?= $(PYTHON) -c "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(LINT_IMPORTS)

typecheck:
	$(PYTHON) -m mypy

## screenshots: refresh docs/screenshots/ with the dashboard's browser tests (needs what
## `make deps` installs, and the pallets for the fit page); a plain test run keeps its
## screenshots in a temporary folder and leaves docs/ as it found it
screenshots:
	HPCAF_SCREENSHOTS=$(CURDIR)/docs/screenshots $(PYTHON) -m pytest -ra -q \
	  tests/test_dashboard.py \
	  tests/test_fit.py::test_fit_task_page_shows_the_exclusion_plot $(PYTEST_ARGS)

clean:
	rm -rf .cache .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
