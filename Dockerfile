# syntax=docker/dockerfile:1
# Duckcast API and store image: `duckcast serve` by default (compose runs `duckcast store` in
# the same image). Built in two stages: the final image holds Python, one virtualenv with the
# locked dependencies and the duckcast package (its schemas and static files are package
# data), and nothing else: no compiler, no pip, no source tree.

FROM python:3.11.11-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/duckcast

# Dependencies first, each pinned with its hashes (deploy/requirements.lock, `make lock`): a
# code change reuses this layer instead of reinstalling everything.
COPY deploy/requirements.lock /tmp/requirements.lock
RUN /opt/duckcast/bin/pip install --no-cache-dir --require-hashes --no-deps \
      -r /tmp/requirements.lock

# Then the package alone, built with the locked setuptools (no resolution, no download).
COPY pyproject.toml README.md /src/
COPY service /src/service
RUN /opt/duckcast/bin/pip install --no-cache-dir --no-deps --no-build-isolation /src \
 && /opt/duckcast/bin/pip uninstall --yes --quiet setuptools pip

FROM python:3.11.11-slim-bookworm

ENV PATH=/opt/duckcast/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DUCKCAST_DATA_DIR=/data \
    DUCKCAST_LOG_FORMAT=json

# A fixed uid keeps the ownership of existing volumes valid across rebuilds. The directories
# compose mounts named volumes on exist here, owned by that user: Docker seeds an empty named
# volume with the image's directory (and its owner); a missing one would be root-owned.
RUN groupadd --system --gid 10001 duckcast \
 && useradd --system --uid 10001 --gid duckcast --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin duckcast \
 && mkdir -p /data/uploads /run/duckcast /run/grafana \
 && chown duckcast:duckcast /data /data/uploads /run/duckcast /run/grafana

COPY --from=build /opt/duckcast /opt/duckcast

USER 10001:10001
WORKDIR /data
EXPOSE 8000

# The API's readiness (compose overrides it for the store, which speaks no HTTP).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]

CMD ["duckcast", "serve", "--host", "0.0.0.0", "--port", "8000"]
