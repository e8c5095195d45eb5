"""Gunicorn settings for the Duckcast API workers (`duckcast serve --workers N` uses them;
so does the benchmark's bare ASGI ceiling). Bind and worker count come from the command line."""

import os
import shutil

# uvicorn-worker's UvicornWorker (uvicorn.workers is deprecated) with Duckcast's uvicorn options.
worker_class = "service.worker.DuckcastWorker"
workers = int(os.environ.get("DUCKCAST_WORKERS", "2"))
# SSE streams are closed by the app on shutdown, so workers exit well inside this.
graceful_timeout = 20
timeout = 30
keepalive = 5
backlog = 2048
accesslog = None  # per-request logging costs more than the request; use /metrics


def on_starting(server):
    # Stale files from a previous run would add old counts to /metrics. Under `duckcast serve`
    # the supervisor has done this before starting the store, whose files must stay.
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path and not os.environ.get("DUCKCAST_SUPERVISED"):
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path, exist_ok=True)


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


# One fixed control socket per user would clash between instances (tests, benchmarks).
control_socket_disable = True
