# carbench — common tasks. `make install` once, then `make demo` / `make test`.
PY ?= .venv/bin/python
PIP ?= .venv/bin/pip

.PHONY: help install test demo app lint bench bench-gpu toy-model clean

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

bench-gpu:          ## GPU throughput in one run of at most 8 minutes: stages, batch sizes, memory, utilisation, CRF workers, bf16 vs fp32 (BENCH_GPU_ARGS="--out DIR"; CPU smoke: "--device cpu --tiny")
	$(PY) benchmarks/bench_gpu.py $(BENCH_GPU_ARGS)

toy-model:          ## retrain the bundled toy CLIPs: stages 1, 2 (proposer) and 3 (classifier); resumable from .cache/toy_stage{1,2,3}
	$(PY) -m carbench.toy.train --stage 1 --resume $(TOY_ARGS)
	$(PY) -m carbench.toy.train --stage 2 --resume $(TOY_ARGS)
	$(PY) -m carbench.toy.train_classifier --resume

lint:
	$(PY) -m ruff check src tests benchmarks evaluate.py

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache

help:               ## list these targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:[^#]*## /\t/' | expand -t 20
