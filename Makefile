# carbench — common tasks. `make install` once, then `make demo` / `make test`.
PY ?= .venv/bin/python
PIP ?= .venv/bin/pip

.PHONY: install test demo lint bench toy-model clean

install:            ## create .venv and install carbench with its dev tools
	test -d .venv || python3 -m venv .venv
	$(PIP) install --upgrade pip
	$(PIP) install -e ".[dev]"

test:               ## the test suite (what CI runs)
	$(PY) -m pytest -q

demo:               ## the bundled default run, plus overlay PNGs of the first images
	$(PY) evaluate.py overlays=4

bench:              ## speed benchmark: fast vs reference structure (see benchmarks/bench_car.py)
	$(PY) benchmarks/bench_car.py $(BENCH_ARGS)

toy-model:          ## retrain the bundled toy CLIP (resumable: rerun continues from .cache/toy_train)
	$(PY) -m carbench.toy.train --resume $(TOY_ARGS)

lint:
	$(PY) -m ruff check src tests benchmarks evaluate.py

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
