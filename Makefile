# Two commands on a fresh machine: `make demo` and `make test`. Each installs what it needs
# into .venv (the CPU build of torch is pinned by constraints.txt).
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-all bench
$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/permalign demo --out permalign-demo --force

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-all: $(VENV)/.installed
	$(PY) -m pytest -q -m ""

bench: $(VENV)/.installed
	$(PY) bench/weight_matching.py
