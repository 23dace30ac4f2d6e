# mailgw: `make run` serves the gateway on the embedded default (SQLite),
# `make test` runs the whole trial suite. Both create .venv when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
CONFIG ?= var/mailgw.toml

.PHONY: run test bench clean install

$(PY):
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]' --config-settings editable_mode=compat
	touch $@

install: $(INSTALLED)

run: $(INSTALLED)
	$(PY) -m mailgw.admin.devsetup --config $(CONFIG)
	$(VENV)/bin/twistd -n --pidfile= mailgw --config $(CONFIG)

test: $(INSTALLED)
	$(PY) -m tests.run $(TESTS)

clean:
	rm -rf $(VENV) _trial_temp build *.egg-info
