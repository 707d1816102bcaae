"""One build, forked from the server: become the client's process, run the CLI, report.

Everything here runs in the fork and ends in ``os._exit``: nothing may return into the server's
loop. The child takes over what a process started by the client would have had: its stdin,
stdout and stderr, working directory, environment, umask, resource limits, CPU affinity and
niceness. It leads a process group of its own, so the client can signal it (and anything it
starts) as a terminal signals a foreground job. If the client goes away without waiting for the
status (killed), the child is killed too: ``kill -9`` of ``mergebuild`` means what it always did,
and a killed build leaves its output as any killed build does (``docs/cache.md``).
"""

from __future__ import annotations

import fcntl
import io
import os
import resource
import select
import signal
import socket
import sys
import traceback
from typing import Any, NoReturn

from mergefile._exit import finish_process
from mergefile.server import protocol


def _adopt(state: dict[str, Any]) -> None:
    os.chdir(state["cwd"])
    os.environ.clear()
    os.environ.update(state["env"])
    from mergefile.server.environment import set_environment_defaults

    set_environment_defaults()
    os.umask(int(state["umask"]))
    for name, (soft, hard) in state.get("limits", {}).items():
        try:  # a limit above the server's hard limit cannot be raised; the server's stays
            resource.setrlimit(getattr(resource, name), (soft, hard))
        except (ValueError, OSError, AttributeError):
            pass
    if state.get("affinity") and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, state["affinity"])
        except OSError:
            pass
    try:  # only ever nicer: an unprivileged process cannot raise its priority back
        if int(state["nice"]) > os.getpriority(os.PRIO_PROCESS, 0):
            os.setpriority(os.PRIO_PROCESS, 0, int(state["nice"]))
    except (OSError, KeyError):
        pass


def _text_stream(fd: int, old: io.TextIOWrapper, write: bool) -> io.TextIOWrapper:
    """A standard stream over ``fd`` as Python builds one at start-up (line-buffered on a
    terminal; stderr always)."""
    raw = open(fd, "wb" if write else "rb", closefd=False)  # noqa: SIM115 - lives as long as the process
    line = write and (fd == 2 or os.isatty(fd))
    return io.TextIOWrapper(raw, encoding=old.encoding, errors=old.errors, line_buffering=line)


def _rebind_stdio(fds: list[int]) -> None:
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        if fd != target:
            os.close(fd)
    sys.stdin = sys.__stdin__ = _text_stream(0, sys.__stdin__ or sys.stdin, write=False)
    sys.stdout = sys.__stdout__ = _text_stream(1, sys.__stdout__ or sys.stdout, write=True)
    sys.stderr = sys.__stderr__ = _text_stream(2, sys.__stderr__ or sys.stderr, write=True)


def _die_with_client(conn: socket.socket) -> None:
    """Be killed the moment the client's end closes. The client sends nothing after its request,
    so the socket becomes readable only at its end; with ``O_ASYNC`` the kernel then sends this
    process SIGIO, whose default action terminates it: no thread, and no wait for Python code
    (a build blocked in a long tensor operation would not run a handler soon)."""
    signal.signal(signal.SIGIO, signal.SIG_DFL)
    fcntl.fcntl(conn.fileno(), fcntl.F_SETOWN, os.getpid())
    fcntl.fcntl(conn.fileno(), fcntl.F_SETFL, fcntl.fcntl(conn.fileno(), fcntl.F_GETFL) | os.O_ASYNC)
    readable, _, _ = select.select([conn], [], [], 0)
    if readable and not conn.recv(1, socket.MSG_PEEK):  # it closed before O_ASYNC was set
        os.kill(os.getpid(), signal.SIGKILL)


def _stop_dying_with_client(conn: socket.socket) -> None:
    try:
        fcntl.fcntl(conn.fileno(), fcntl.F_SETFL, fcntl.fcntl(conn.fileno(), fcntl.F_GETFL) & ~os.O_ASYNC)
    except OSError:
        pass


def _run_cli(argv: list[str]) -> int:
    from mergefile.cli.main import main

    try:
        return main(argv)
    except SystemExit as e:  # argparse: --help, a bad flag
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1


def _close_inherited(inherited: list[int]) -> None:
    signal.set_wakeup_fd(-1)  # first: the server's wake-up pipe must not get this process's signals
    for fd in inherited:
        try:
            os.close(fd)
        except OSError:
            pass


def wait_for_request(channel: socket.socket, inherited: list[int]) -> NoReturn:
    """A spare build, forked before its request: wait for the request, the client's connection
    and its descriptors from the server, then run it. The channel's end (the server stopped or
    gave up the spare) ends the spare."""
    try:
        _close_inherited(inherited)
        request, fds = protocol.recv(channel, protocol.MAX_FDS + 1)
        channel.close()
        if len(fds) != protocol.MAX_FDS + 1:
            os._exit(1)
        conn = socket.socket(fileno=fds[0])
    except BaseException:  # noqa: BLE001 - EOF: no request will come
        os._exit(0)
    run(conn, request, fds[1:], [])


def run(conn: socket.socket, request: dict[str, Any], fds: list[int], inherited: list[int]) -> NoReturn:
    """Never returns: the fork ends here with the build's exit status."""
    code = 1
    try:
        _close_inherited(inherited)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.setpgid(0, 0)
        conn.settimeout(None)
        _rebind_stdio(fds)
        _adopt(request["state"])
        sys.argv = ["mergebuild", *request["argv"]]
        _die_with_client(conn)
        code = _run_cli(list(request["argv"]))
    except BaseException:  # noqa: BLE001 - a process would print it and exit 1
        try:
            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
        code = 1
    _exit(conn, code)


def _exit(conn: socket.socket, code: int) -> NoReturn:
    """What interpreter shutdown does (join threads, atexit), then the status to the client."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # no KeyboardInterrupt may escape from here
    finish_process()
    _stop_dying_with_client(conn)  # the client closes once it has the status
    try:
        protocol.send(conn, {"exit": code})
    except OSError:
        pass
    os._exit(code & 0xFF)
