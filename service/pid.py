"""`getpid()`: this process's id, as `os.getpid()` gives it, without a system call per use.

glibc no longer caches the pid, so every `os.getpid()` is a system call (~0.3 µs here), and a
cached read made five of them per request: Prometheus's multiprocess values check the pid on
every increment (to notice a fork), and the access log on every line. A pid changes only in a
forked child, and a fork through `os.fork()` (gunicorn's workers, multiprocessing) runs the
hook below in the child before any Python code; a new interpreter imports this module anew.
"""

from __future__ import annotations

import os

_pid = os.getpid()


def getpid() -> int:
    return _pid


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)
