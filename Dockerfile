# syntax=docker/dockerfile:1
#
# The service's image: the Procfile's web process as a non-root user on python:3.11-slim
# (.python-version). The build stage installs requirements.txt into a venv, as Heroku's Python
# buildpack does; the final stage gets only that venv: no checkout, no pip cache, no build tools.
#
#   docker build -t webapp .
#   docker run --rm -p 8000:8000 -e DATABASE_URL=postgresql://user:password@host:5432/db webapp
#
# Release step: the image's CMD never migrates (replicas starting together would race, and a failed
# migration must stop the deploy, not crash-loop the web process). Run it once per deploy, before
# the new web processes start, as the Procfile's `release: webapp migrate` does on Heroku:
#   docker compose run --rm migrate                          # compose.yaml's one-shot (`up` runs it first)
#   docker run --rm -e DATABASE_URL=... webapp webapp migrate  # a platform's release / pre-deploy command
#
# tests/unit/test_platform_files.py lints this file (hadolint) and checks its build context;
# tests/functional/test_dockerfile.py runs its install steps and its CMD and HEALTHCHECK.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
WORKDIR /src
# The pins alone first (requirements.txt less its last line, `.`): this layer is reused until they change.
COPY requirements.txt ./
RUN sed '/^\.$/d' requirements.txt > /tmp/pins.txt \
    && /opt/venv/bin/pip install --no-deps -r /tmp/pins.txt
# Then `.`, this package (not editable): what building it reads (README.md: its long_description;
# LICENSE: into its dist-info).
COPY pyproject.toml setup.cfg README.md LICENSE ./
COPY webapp ./webapp
COPY sql ./sql
RUN /opt/venv/bin/pip install --no-deps -r requirements.txt \
    && /opt/venv/bin/pip check

FROM python:3.11-slim
# BIND_HOST: all interfaces, whatever the default outside a container: the port is published from outside.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PORT=8000 BIND_HOST=0.0.0.0
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
# Owned by root and read-only for the app: gunicorn's heartbeat and the metrics files go to /dev/shm.
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# /livez touches no dependency: a database outage must not get the container restarted.
# python, not curl: the slim image has no curl. PORT as the process sees it (a platform may set another).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('PORT', '8000'), timeout=2)"]
# The Procfile's web line: `webapp serve` execs gunicorn with webapp's settings (it reads PORT,
# WEB_CONCURRENCY, ...); exec form, so gunicorn is PID 1 and gets docker stop's SIGTERM itself.
CMD ["webapp", "serve"]
