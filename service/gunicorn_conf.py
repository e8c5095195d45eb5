"""Gunicorn settings for the API workers. `duckcast serve --workers N` loads this module
(`gunicorn -c python:service.gunicorn_conf`), so it works from any directory once installed;
`deploy/gunicorn.conf.py` is the same settings for running gunicorn by hand. Bind address and
worker count come from the command line."""

from __future__ import annotations

import os
import shutil
from typing import Any

from service import gcpolicy, redaction
from service.config import Settings
from service.logging import logging_config

redaction.install()  # the master's own records; workers fork from it with the factory set
_settings = Settings()

# uvicorn-worker's UvicornWorker (uvicorn.workers is deprecated) with Duckcast's uvicorn options.
worker_class = "service.worker.DuckcastWorker"
workers = _settings.workers
# SSE streams are closed by the app on shutdown, so workers exit well inside this.
graceful_timeout = 20
timeout = 30
keepalive = 5
backlog = 2048
# The app writes its own access log (DUCKCAST_ACCESS_LOG): route templates, no query strings.
accesslog = None
logconfig_dict = logging_config(_settings.log_format, _settings.log_level)
# One fixed control socket per user would clash between instances (tests, benchmarks).
control_socket_disable = True


def on_starting(server: Any) -> None:
    # Stale files from a previous run would add old counts to /metrics. Under `duckcast serve`
    # the supervisor has done this before starting the store, whose files must stay.
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path and not os.environ.get("DUCKCAST_SUPERVISED"):
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path, exist_ok=True)


def post_worker_init(worker: Any) -> None:
    # The app is loaded (create_app ran in the worker): what exists now lives until exit.
    gcpolicy.settle(_settings.gc_threshold)


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
