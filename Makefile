# Two entry points, each working from a fresh clone:
#   make demo   install into $(VENV) and run the main job on its built-in default (tiny CPU demo)
#   make test   install into $(VENV) and run the test suite
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# The torch build that installs on a CPU machine here; GPU users bring their own (the package asks torch>=2.10).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: install demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install $(TORCH_PINS) -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) recipes/imagenet256.py --demo

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/forward_cpu.py

clean:
	rm -rf $(VENV) runs outputs .pytest_cache .hypothesis
