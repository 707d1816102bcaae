"""The console script's side: hand the build to a matching server, or say there is none.

``MERGEBUILD_SERVER``:

* ``auto``: use a server that is running for this code and environment; start none.
* ``on``: the same, and when none is running, start one in the background for the *next* build
  (this build runs in its own process at once, never waiting for the server's imports; the
  server starts importing once this build has exited, not beside it).
* ``off``: never.
* unset: ``off`` inside a batch job (a scheduler's job variables are set, or the process has no
  controlling terminal: cron, systemd units, CI runners), where the job's limits must apply to
  the build; ``on`` for a person at a terminal (stdin and stderr are terminals: the edit-rebuild
  loop a server is for); ``auto`` for other scripts, which never get a server they did not ask
  for.

Only a command that will compute tensors starts a server (:func:`computes_tensors`): ``--help``,
``-n``, ``-q``, ``status``, ``graph`` and the other read-only verbs never do.

None from :func:`run` means "build in this process": no server, a server that refused (another
code version, not single-threaded, another cgroup) or one that could not be reached before it
forked anything. Once a build has been forked, its outcome is the answer, whatever happens to
the connection.

Every build pays this module's imports, so it keeps to a few small standard modules: no
pathlib, typing or subprocess (until a server must be started), and ``_socket``/``_signal``,
the C modules under ``socket``/``signal``, whose enum wrappers would double the client's time.
"""

from __future__ import annotations

import _signal as signal
import _socket as socket
import os
import resource
import sys

from mergefile.server import protocol, server_dir
from mergefile.server.environment import batch_job, build_environment, cgroup

MODE_ENV = "MERGEBUILD_SERVER"
ZYGOTE = "from mergefile.server.zygote import main; main()"
FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
LIMITS = (
    "RLIMIT_AS",
    "RLIMIT_DATA",
    "RLIMIT_RSS",
    "RLIMIT_NOFILE",
    "RLIMIT_CPU",
    "RLIMIT_FSIZE",
    "RLIMIT_CORE",
    "RLIMIT_NPROC",
    "RLIMIT_MEMLOCK",
    "RLIMIT_STACK",
)


# Verbs that never compute a tensor, and flags that make any command compute none.
READ_ONLY_VERBS = frozenset(
    {"status", "graph", "cache", "log", "fmt", "import", "export", "lock", "push", "server", "ui", "help"}
)
READ_ONLY_FLAGS = frozenset({"-h", "--help", "--version", "-n", "--dry-run", "-q", "--question"})


def mode(env=os.environ) -> str:
    value = env.get(MODE_ENV, "").strip().lower()
    if not value:
        if batch_job(env) or not controlling_terminal():
            return "off"
        return "on" if interactive() else "auto"
    if value in ("0", "off", "no", "false", "never"):
        return "off"
    if value in ("1", "on", "yes", "true", "always"):
        return "on"
    return "auto"


def interactive() -> bool:
    try:
        return os.isatty(0) and os.isatty(2)
    except OSError:
        return False


def controlling_terminal() -> bool:
    """Whether this process has a controlling terminal (cron, systemd, CI runners have none)."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


def computes_tensors(argv: list[str]) -> bool:
    """Whether this command line may compute tensors: only such a command starts a server.

    A cheap look at the words, before any parsing: a read-only flag anywhere (``-n`` also in a
    bundle such as ``-nB``) or a read-only verb among the words means no. A Mergefile or target
    named like a verb only costs a server that is not started.
    """
    for word in argv:
        if word == "--":
            break
        if word in READ_ONLY_FLAGS or word in READ_ONLY_VERBS:
            return False
        if (
            len(word) > 1
            and word[0] == "-"
            and word[1] != "-"
            and set(word[1:]) & {"n", "q", "h"}
            and word[1:].isalpha()
        ):
            return False
    return True


def connect(sock_path: str, timeout: float | None = 5.0) -> socket.socket | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(sock_path)
    except OSError:
        s.close()
        return None
    return s


def ask(sock_path: str, message: dict, timeout: float = 5.0) -> dict | None:
    """One request and its answer (ping, stop); None if no server answers there."""
    s = connect(sock_path, timeout)
    if s is None:
        return None
    try:
        protocol.send(s, message)
        return protocol.recv(s)[0]
    except (OSError, EOFError, protocol.ProtocolError):
        return None
    finally:
        s.close()


def spawn(directory: str, key: str, after: int | None = None):
    """Start a server for ``key`` in the background (its ``Popen``). It inherits the part of this
    environment a build reads (which includes what its fingerprint describes) and serves once its imports are done; with
    ``after``, it starts importing only once that process has exited."""
    import subprocess

    log_path = server_dir.paths(directory, key)["log"]
    try:
        if os.stat(log_path).st_size > 2**20:
            os.unlink(log_path)
    except OSError:
        pass
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-c", ZYGOTE, directory, key, sys.path[0], str(after or 0)],
            env=build_environment(dict(os.environ)),  # no secrets a build does not need
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd="/",
            start_new_session=True,
            close_fds=True,
        )


def client_state() -> dict:
    """What a process started here would inherit, besides argv and descriptors."""
    umask = os.umask(0)
    os.umask(umask)
    limits = {name: list(resource.getrlimit(getattr(resource, name))) for name in LIMITS if hasattr(resource, name)}
    state = {
        "cwd": os.getcwd(),
        "env": build_environment(dict(os.environ)),
        "umask": umask,
        "limits": limits,
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "cgroup": cgroup(),
    }
    if hasattr(os, "sched_getaffinity"):
        state["affinity"] = sorted(os.sched_getaffinity(0))
    return state


def _stdio() -> tuple[list[int], list[int]]:
    """The descriptors to pass (0, 1, 2; /dev/null for a closed one) and those to close after."""
    fds, opened = [], []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            fds.append(null)
            opened.append(null)
    return fds, opened


def run(argv: list[str]) -> int | None:
    """The build's exit status from a server, or None: build in this process."""
    how = mode()
    if how == "off":
        return None
    start = how == "on" and computes_tensors(argv)
    try:
        directory = server_dir.private_dir(create=start)
    except server_dir.UnsafeDirectory as e:
        print(f"mergebuild: warning: not using a build server: {e}", file=sys.stderr)
        return None
    if directory is None:
        return None
    from mergefile.server.fingerprint import fingerprint

    key = fingerprint(os.environ)
    conn = connect(server_dir.paths(directory, key)["sock"])
    if conn is None:
        if start:
            proc = spawn(directory, key, after=os.getpid())
            if os.isatty(2):
                print(
                    f"mergebuild: starting a build server in the background for the next builds (pid {proc.pid}; "
                    "`mergebuild server stop` ends it, MERGEBUILD_SERVER=off turns this off)",
                    file=sys.stderr,
                )
        return None
    try:
        state = client_state()
    except OSError:  # e.g. the working directory was deleted: let the CLI say so
        conn.close()
        return None
    try:
        return _build(conn, {"op": "build", "fingerprint": key, "argv": argv, "state": state})
    finally:
        conn.close()


def _build(conn: socket.socket, request: dict) -> int | None:
    fds, opened = _stdio()
    try:
        protocol.send(conn, request, fds)
        reply, _ = protocol.recv(conn)
    except (OSError, EOFError, protocol.ProtocolError):
        return None  # nothing was forked: build here
    finally:
        for fd in opened:
            os.close(fd)
    if "pid" not in reply:
        return None
    pid = int(reply["pid"])
    conn.settimeout(None)
    _forward_signals(pid)
    while True:
        try:
            message, _ = protocol.recv(conn)
        except (OSError, EOFError, protocol.ProtocolError):
            print(f"mergebuild: error: lost the build server while it ran this build (pid {pid})", file=sys.stderr)
            return 1
        if "exit" in message:
            return int(message["exit"])
        if "signal" in message:
            _die_by(int(message["signal"]))


def _forward_signals(pid: int) -> None:
    """Signals meant for this process go to the build (its process group, as a terminal would)."""

    def send(signum: int) -> None:
        try:
            os.killpg(pid, signum)
        except OSError:
            try:
                os.kill(pid, signum)
            except OSError:
                pass

    def forward(signum: int, _frame) -> None:
        send(signum)

    def stop(_signum: int, _frame) -> None:  # Ctrl-Z: stop the build, then ourselves
        send(signal.SIGSTOP)
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)
        signal.signal(signal.SIGTSTP, stop)  # resumed (fg/bg): the build resumes too
        send(signal.SIGCONT)

    for name in FORWARDED:
        signal.signal(getattr(signal, name), forward)
    signal.signal(signal.SIGTSTP, stop)


def _die_by(signum: int) -> None:
    """End as the build ended: killed by the same signal (the shell says so)."""
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)
