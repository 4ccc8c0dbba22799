# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3
export HPCAF_IMAGE_CACHE ?= $(CURDIR)/.cache/images

.PHONY: demo test deps lint typecheck unit image clean

deps:
	scripts/install-deps.sh test fit

image: deps
	$(PYTHON) -m harvester.cli image build containers/base.def --name base
	$(PYTHON) -m harvester.cli image build containers/pyhf.def --name pyhf

## demo: fit a real pallet end to end on the embedded defaults; prints the table and plot path
demo:
	scripts/install-deps.sh fit
	scripts/demo.sh

## test: install what the tests need, then lint, type-check and run the test suite
test: deps lint typecheck
	$(PYTHON) -m pytest -ra -q $(PYTEST_ARGS)

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

typecheck:
	$(PYTHON) -m mypy

clean:
	rm -rf .cache .mypy_cache .ruff_cache .pytest_cache
