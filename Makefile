# carbench — common tasks. `make install` once, then `make demo` / `make test`.
PY ?= .venv/bin/python
PIP ?= .venv/bin/pip

.PHONY: install test demo app lint bench toy-model clean

install:            ## create .venv and install carbench with its dev tools
	test -d .venv || python3 -m venv .venv
	$(PIP) install --upgrade pip
	$(PIP) install -e ".[dev]"

test:               ## the test suite (what CI runs)
	$(PY) -m pytest -q

demo:               ## the bundled default run, plus overlay PNGs of the first images
	$(PY) evaluate.py overlays=4

app:                ## the browser demo on the bundled toy CLIP (APP_ARGS="--port 7861 model.classifier=vitl14")
	$(PY) -m carbench.demo $(APP_ARGS)

bench:              ## speed benchmark: fast vs reference structure (see benchmarks/bench_car.py)
	$(PY) benchmarks/bench_car.py $(BENCH_ARGS)

toy-model:          ## retrain the bundled toy CLIP: stage 1 then stage 2 (resumable: rerun continues from .cache/toy_stage{1,2})
	$(PY) -m carbench.toy.train --stage 1 --resume $(TOY_ARGS)
	$(PY) -m carbench.toy.train --stage 2 --resume $(TOY_ARGS)

lint:
	$(PY) -m ruff check src tests benchmarks evaluate.py

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
