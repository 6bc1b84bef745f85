# Two entry points, each working from a fresh clone:
#   make demo   install into $(VENV) and run the main job on its built-in default (tiny CPU demo)
#   make test   install into $(VENV) and run the test suite
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# The torch build that installs on a CPU machine here; GPU users bring their own (the package asks torch>=2.10).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
# The suite runs on two workers (pytest-xdist); PYTEST_ARGS=-n0 runs it in one process.
PYTEST_ARGS ?= -n 2

.PHONY: install demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install $(TORCH_PINS) -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) recipes/imagenet256.py --demo

test: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: install
	$(PY) benchmarks/forward_cpu.py

clean:
	rm -rf $(VENV) runs outputs .pytest_cache .hypothesis
