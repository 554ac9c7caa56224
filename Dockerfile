# wflogs as a container: `docker build -t wflogs:local .` (README, "Container").
# BASE must provide python3 (>= 3.11) on PATH with the venv module; the build and runtime stages use
# the same BASE, so the virtualenv's interpreter link stays valid when it is copied across.
ARG BASE=python:3.12-slim

# -- build: install wflogs and its dependencies into a virtualenv --------------------------------------
FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md requirements.txt ./
COPY bot ./bot
COPY storage ./storage
# The locked versions (requirements.txt, checked against their hashes), then wflogs itself without
# dependencies as a regular (not editable: /src is not in the runtime stage) install; then the installers
# go: the runtime needs neither pip nor setuptools (sqlite-utils lists pip only for `sqlite-utils install`).
# matplotlib (the digest's chart) must import on BASE; it keeps its font cache in $HOME/.config, i.e. /data.
RUN python3 -m venv /opt/wflogs \
 && /opt/wflogs/bin/python -m pip install --require-hashes -r requirements.txt \
 && /opt/wflogs/bin/python -m pip install --no-deps . \
 && /opt/wflogs/bin/python -m pip uninstall -y -q pip setuptools \
 && /opt/wflogs/bin/wflogs --help >/dev/null \
 && /opt/wflogs/bin/python -c "import matplotlib; matplotlib.use('Agg'); import matplotlib.figure"

# -- runtime: the virtualenv, a non-root user and /data -------------------------------------------------
FROM ${BASE}
RUN groupadd --gid 10001 wflogs \
 && useradd --uid 10001 --gid wflogs --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin wflogs \
 && mkdir -p /data \
 && chown wflogs:wflogs /data
COPY --from=build /opt/wflogs /opt/wflogs
ENV PATH=/opt/wflogs/bin:$PATH \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WFLOGS_DB=/data/wflogs.db
# A fresh named volume takes /data's owner from the image, so the non-root user can write to it.
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001
# Health and, with SLACK_SIGNING_SECRET, Slack's HTTP requests (PORT, default 3000).
EXPOSE 3000
# GET /healthz with the image's own Python (no curl), never through a proxy even if one is set;
# when it fails, the health log keeps the one line saying why (refused, timed out, HTTP 503...).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD out=$(python3 -c "import urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:${PORT:-3000}/healthz', timeout=4)" 2>&1) \
   || { echo "$out" | tail -n 1; exit 1; }
# Exec form: wflogs is PID 1 and gets the runtime's SIGTERM itself (`wflogs run` stops cleanly on it).
ENTRYPOINT ["wflogs"]
CMD ["run"]
