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
	@echo "make: installing mailgw and its dependencies into $(VENV) (about a minute the first time)"
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@# twistd finds plugins only on sys.path folders (twisted/plugins under them),
	@# which setuptools' editable finder is not: put the checkout there itself.
	$(PY) -c 'import sysconfig, os; open(os.path.join(sysconfig.get_paths()["purelib"], "mailgw-checkout.pth"), "w").write(os.getcwd() + "\n")'
	touch $@

install: $(INSTALLED)

# Ctrl-C (or a SIGTERM) is how a development gateway ends: not an error.
run: $(INSTALLED)
	$(PY) -m mailgw.admin.devsetup --config $(CONFIG)
	@$(VENV)/bin/twistd -n --pidfile= mailgw --config $(CONFIG) & pid=$$!; \
	  trap 'kill -TERM $$pid 2>/dev/null' INT TERM; \
	  wait $$pid; status=$$?; [ $$status -lt 128 ] || wait $$pid; status=$$?; \
	  [ $$status -eq 0 -o $$status -eq 130 -o $$status -eq 143 ] || exit $$status

test: $(INSTALLED)
	$(VENV)/bin/ruff check --quiet .
	$(PY) -m tests.run $(TESTS)

# mailgw against an aiosmtpd baseline (bench/RESULTS.md); BENCH="--quick" for less.
# 5,000 idle connections need more descriptors than the usual 1,024.
bench: $(INSTALLED)
	$(PY) -m pip install -q -e '.[bench]'
	ulimit -n 16384 2>/dev/null || ulimit -n $$(ulimit -Hn); $(PY) -m bench.run $(BENCH)

clean:
	rm -rf $(VENV) _trial_temp build *.egg-info
