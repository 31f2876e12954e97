# audiorq developer entry points. `make demo` and `make test` install what they need themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all bench clean

$(STAMP): setup.cfg constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,export]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/audiorq demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n 2 --dist loadfile

test-all: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

bench: $(STAMP)
	$(PY) eval/bench_frontend.py
	$(PY) eval/bench_augment.py --threads 1
	$(PY) eval/bench_data.py
	$(PY) eval/bench_train.py
	$(PY) eval/bench_probe.py --threads 1
	$(PY) eval/bench_listen.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
