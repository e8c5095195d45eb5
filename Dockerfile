# syntax=docker/dockerfile:1
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DUCKCAST_DATA_DIR=/data

# A fixed uid keeps the ownership of existing volumes valid across rebuilds.
RUN groupadd --system --gid 10001 duckcast \
 && useradd --system --uid 10001 --gid duckcast --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin duckcast

WORKDIR /app

# Every dependency ships manylinux wheels, so no compiler is needed. README.md is the
# package's long description (pyproject `readme`); setuptools only warns if it is missing.
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip install --no-cache-dir .

# Not in the wheel: read at run time from the working directory (the app serves
# protos/*.proto; gunicorn reads deploy/gunicorn.conf.py).
COPY protos ./protos
COPY deploy ./deploy

# Create /data/uploads owned by the app user before declaring the volume: Docker seeds an
# empty named volume (compose mounts one on /data/uploads) with the image's directory and
# its owner; a mount point missing from the image would be root-owned and unwritable.
RUN mkdir -p /data/uploads && chown -R duckcast:duckcast /data
VOLUME /data

USER duckcast
EXPOSE 8000
CMD ["duckcast", "serve", "--host", "0.0.0.0", "--port", "8000"]
