# moelens: `make demo` installs and runs the main job end to end; `make test` runs the tests.
PY_SYS ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-quick lint profile bench bench-attention plots clean

$(STAMP): pyproject.toml
	$(PY_SYS) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	$(PY) -m runtime.attention.build
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m runtime demo

test: install
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check planner runtime tests bench

profile: install
	$(PY) -m runtime profile

bench: install bench-attention
	$(PY) -m bench.run_all

bench-attention: install
	$(PY) -m bench.bench_attention

plots: install
	$(PY) notebooks/plots.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
