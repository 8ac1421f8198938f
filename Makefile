# Two commands on a fresh machine: `make demo` and `make test` (README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.amodal-installed
PYTEST_ARGS ?=

.PHONY: demo demo-xray test venv system-deps bench-latency bench-kernels clean

$(STAMP): requirements.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade -q pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

venv: $(STAMP)

system-deps:
	bash .ci/system-deps.sh

demo: system-deps $(STAMP)
	$(BIN)/python -m amodal.demo

# a baggage scanner's belt: rendered bags as DICOS files in a hot folder, the xray pipeline, out/demo/annotated.mp4
demo-xray: system-deps $(STAMP)
	$(BIN)/python -m amodal.demo --feed xray

test: system-deps $(STAMP)
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

bench-latency: system-deps $(STAMP)
	$(BIN)/amodal bench latency --out out/bench/latency

bench-kernels: $(STAMP)
	$(BIN)/amodal bench kernels --out out/bench/kernels

clean:
	rm -rf $(VENV) out build *.egg-info
