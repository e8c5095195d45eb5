"""service.pid: the process id without a system call, right in a forked child too."""

from __future__ import annotations

import os

from service.pid import getpid


def test_the_pid_is_the_processs_own_in_a_forked_child_too() -> None:
    assert getpid() == os.getpid()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os._exit(0 if getpid() == os.getpid() else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
