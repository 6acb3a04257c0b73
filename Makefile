# moelens: `make demo` installs and runs the main job end to end; `make test` runs the tests.
PY_SYS ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-quick lint profile bench bench-attention plots clean

# The editable install compiles the C++ attention extension (setup.py) against the torch installed just
# before it, hence --no-build-isolation; rerun `make install` after changing csrc/ or torch.
$(STAMP): pyproject.toml setup.py $(wildcard runtime/attention/csrc/*)
	$(PY_SYS) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0 'setuptools>=77' wheel ninja
	$(PIP) install --quiet --no-build-isolation -e '.[dev]'
	$(PY) -c 'from runtime.attention.extension import describe; print(describe())'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m runtime demo

test: install
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check planner runtime tests bench notebooks setup.py
	$(VENV)/bin/ruff format --check planner runtime tests bench notebooks setup.py

profile: install
	$(PY) -m runtime profile

bench: install bench-attention
	$(PY) -m bench.run_all

bench-attention: install
	$(PY) -m bench.bench_attention

plots: install
	$(PY) notebooks/plots.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache runtime/attention/_C.*.so
