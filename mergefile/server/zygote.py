"""The build server: import once, then accept, fork and reap, one build per fork.

Started detached by the client (``client.spawn``) as ``python -c ...zygote.main() DIR KEY``,
with the environment of the client that started it: that environment is what its imports saw,
and its fingerprint must equal ``KEY`` or it exits at once. It holds ``KEY.lock`` while it
serves, so a second server for the same key exits too. Before each fork it checks that it is
still single-threaded (forking a threaded process can inherit a lock some other thread held);
if an import ever started a thread that outlives a fork, it refuses and the client builds in
its own process.

It ends on ``mergebuild server stop`` (or SIGTERM), after ``MERGEBUILD_SERVER_IDLE`` without a
build, when its code or packages change on disk, or when its socket is replaced or removed. It
first closes its socket, then waits for the builds it forked (they report to their clients
themselves).
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

from mergefile.server import protocol, server_dir
from mergefile.server.environment import cgroup
from mergefile.server.fingerprint import fingerprint
from mergefile.server.warm import single_threaded, thread_count, warm

IDLE_ENV = "MERGEBUILD_SERVER_IDLE"
DEFAULT_IDLE_S = 3 * 3600.0  # as Bazel's and Gradle's daemons
POLL_S = 2.0


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``3h`` -> seconds."""
    t = text.strip().lower()
    mult = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if t and t[-1] in mult:
        return float(t[:-1]) * mult[t[-1]]
    return float(t)


def idle_seconds(env: dict[str, str]) -> float:
    try:
        return parse_duration(env.get(IDLE_ENV, "")) if env.get(IDLE_ENV) else DEFAULT_IDLE_S
    except ValueError:
        return DEFAULT_IDLE_S


def _wait_for_exit(pid: int, limit_s: float = 1800.0) -> None:
    deadline = time.monotonic() + limit_s
    while pid > 0 and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            return  # not ours (a reused pid)
        time.sleep(0.1)


def _fork_into(work) -> int:
    """Fork; the child runs ``work(child_module)`` and ends there. Nothing may return into the
    server's loop in a fork: it would serve, and unlink the server's socket on its way out."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            from mergefile.server import child

            work(child)
        finally:
            os._exit(1)
    return pid


def log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {message}", file=sys.stderr, flush=True)


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


class Server:
    def __init__(self, directory: Path, key: str, env: dict[str, str]):
        self.directory, self.key, self.env = directory, key, env
        self.files = {kind: Path(p) for kind, p in server_dir.paths(str(directory), key).items()}
        self.idle_s = idle_seconds(env)
        self.children: dict[int, socket.socket] = {}
        self.builds = 0
        self.started = time.time()
        self.stopping = ""
        self.listener: socket.socket | None = None
        self.sock_ino = 0
        self.own_fds: list[int] = []  # the lock and the wake-up pipe: no build may keep them
        self.spare: tuple[int, socket.socket] | None = None  # a build forked ahead of its request
        self.lock_fd = -1

    # -- lifetime ---------------------------------------------------------------------------
    def run(self, after: int = 0) -> int:
        lock_fd = os.open(self.files["lock"], os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("another server holds this key; exiting")
            return 0
        self.lock_fd = lock_fd
        self._phase("starting")  # `server stop` and `status` find us before we serve
        _wait_for_exit(after)  # the build that started us: our imports would slow it down
        t0 = time.perf_counter()
        warm()
        if not single_threaded():
            log(f"{thread_count()} threads after the imports: forking would be unsafe; exiting")
            return 1
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        os.set_blocking(wake_r, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self._listen()
        self._phase("serving")
        log(
            f"serving {self.files['sock']} (imports took {time.perf_counter() - t0:.1f} s; "
            f"idle timeout {self.idle_s:.0f} s)"
        )
        self.own_fds = [lock_fd, wake_r, wake_w]
        try:
            self._make_spare()
            self._loop(wake_r)
        finally:
            self._close()
        self._drain()
        log(f"stopped: {self.stopping} ({self.builds} builds served)")
        return 0

    def _listen(self) -> None:
        sock_path = self.files["sock"]
        tmp = sock_path.with_name(f".{sock_path.name}.{os.getpid()}")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        listener.bind(str(tmp))
        os.chmod(tmp, 0o600)
        listener.listen(64)
        os.replace(tmp, sock_path)  # clients see a socket that already accepts, or none
        self.listener, self.sock_ino = listener, os.stat(sock_path).st_ino
        info = {
            "pid": os.getpid(),
            "fingerprint": self.key,
            "started": self.started,
            "python": sys.executable,
            "idle_s": self.idle_s,
        }
        tmp_info = self.files["json"].with_suffix(f".json.{os.getpid()}")
        tmp_info.write_text(json.dumps(info))
        os.replace(tmp_info, self.files["json"])

    def _inherited(self) -> list[int]:
        """Descriptors a fork gets that are not its business (other builds' clients too)."""
        fds = self.own_fds + [c.fileno() for c in self.children.values()]
        return fds + ([self.listener.fileno()] if self.listener is not None else [])

    def _make_spare(self) -> None:
        """Fork the next build before its request comes: forking this process costs ~10 ms,
        which no client then waits for. The spare waits on a socket pair for its request."""
        if self.spare is not None or self.stopping or not single_threaded():
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        inherited = self._inherited() + [ours.fileno()]
        pid = _fork_into(lambda child: child.wait_for_request(theirs, inherited))
        theirs.close()
        self.spare = (pid, ours)

    def _loop(self, wake_r: int) -> None:
        assert self.listener is not None
        last_active = time.monotonic()
        next_check = last_active + POLL_S
        while not self.stopping:
            self._reap()
            now = time.monotonic()
            if self.children:
                last_active = now
            elif now - last_active >= self.idle_s:
                self.stopping = f"idle for {self.idle_s:.0f} s"
                break
            if now >= next_check:
                next_check = now + POLL_S
                self.stopping = self._outdated()
                if self.stopping:
                    break
            readable, _, _ = select.select([self.listener, wake_r], [], [], POLL_S)
            if wake_r in readable:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            if self.listener in readable:
                try:
                    conn, _ = self.listener.accept()
                except OSError:
                    continue
                self._serve(conn)
                last_active = time.monotonic()
                self._make_spare()

    def _outdated(self) -> str:
        try:
            if os.stat(self.files["sock"]).st_ino != self.sock_ino:
                return "socket replaced"
        except OSError:
            return "socket removed"
        if fingerprint(self.env) != self.key:
            return "mergebuild's code or packages changed on disk"
        return ""

    def _on_stop_signal(self, signum: int, _frame: Any) -> None:
        if self.stopping:  # a second signal: do not wait for running builds
            os._exit(1)
        self.stopping = f"signal {signal.Signals(signum).name}"

    def _phase(self, phase: str) -> None:
        """Say in the lock file what this server is doing: ``PID starting|serving|stopping``."""
        text = f"{os.getpid()} {phase}".encode()
        os.ftruncate(self.lock_fd, 0)
        os.pwrite(self.lock_fd, text, 0)

    def _close(self) -> None:
        self._phase("stopping")
        if self.spare is not None:
            self.spare[1].close()  # the spare sees the end of its channel and exits
            self.spare = None
        if self.listener is not None:
            self.listener.close()
        try:
            if os.stat(self.files["sock"]).st_ino == self.sock_ino:
                self.files["sock"].unlink()
                self.files["json"].unlink(missing_ok=True)
        except OSError:
            pass

    def _drain(self) -> None:
        """Wait for the builds already forked; their clients are still waiting for them."""
        while self.children:
            try:
                signal.sigtimedwait([signal.SIGCHLD], POLL_S)
            except InterruptedError:
                pass
            self._reap()

    # -- requests ---------------------------------------------------------------------------
    def _serve(self, conn: socket.socket) -> None:
        fds: list[int] = []
        keep = False
        try:
            conn.settimeout(10)
            if _peer_uid(conn) != os.getuid():
                return
            request, fds = protocol.recv(conn, protocol.MAX_FDS)
            op = request.get("op")
            if op == "stop":
                self.stopping = "mergebuild server stop"
                protocol.send(conn, {"pid": os.getpid(), "running": len(self.children)})
            elif op == "ping":
                protocol.send(conn, self.describe())
            elif op != "build":
                protocol.send(conn, {"refused": f"unknown request {op!r}"})
            elif request.get("fingerprint") != self.key:
                protocol.send(conn, {"refused": "another version of mergebuild or another environment"})
            elif request.get("state", {}).get("cgroup", "") != cgroup():
                protocol.send(
                    conn, {"refused": "the client runs in another cgroup, whose limits a served build would escape"}
                )
            elif len(fds) != 3:
                protocol.send(conn, {"refused": "stdin, stdout and stderr must come with the request"})
            elif self.spare is not None and self._hand_over(conn, request, fds):
                keep = True
            elif not single_threaded():
                protocol.send(conn, {"refused": "the server is not single-threaded"})
            else:
                keep = self._fork(conn, request, fds)
        except (OSError, EOFError, protocol.ProtocolError) as e:
            log(f"request dropped: {e}")
        finally:
            for fd in fds:
                os.close(fd)
            if not keep:
                conn.close()

    def _hand_over(self, conn: socket.socket, request: dict, fds: list[int]) -> bool:
        """Give the request, its client's connection and descriptors to the spare."""
        assert self.spare is not None
        pid, channel = self.spare
        self.spare = None
        try:
            protocol.send(channel, request, [conn.fileno(), *fds])
        except OSError:  # the spare died: fork afresh
            return False
        finally:
            channel.close()
        self._started(pid, conn)
        return True

    def _fork(self, conn: socket.socket, request: dict, fds: list[int]) -> bool:
        inherited = self._inherited()
        self._started(_fork_into(lambda child: child.run(conn, request, fds, inherited)), conn)
        return True

    def _started(self, pid: int, conn: socket.socket) -> None:
        self.builds += 1
        self.children[pid] = conn
        try:
            protocol.send(conn, {"pid": pid})
        except OSError:
            pass

    def _reap(self) -> None:
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.spare is not None and pid == self.spare[0]:
                self.spare[1].close()
                self.spare = None
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            message = {"signal": -code} if code < 0 else {"exit": code}
            message["maxrss_kb"] = usage.ru_maxrss
            try:  # the child has usually reported already and its client is gone
                conn.settimeout(1)
                protocol.send(conn, message)
            except OSError:
                pass
            conn.close()

    def describe(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "fingerprint": self.key,
            "started": self.started,
            "builds": self.builds,
            "running": len(self.children),
            "idle_s": self.idle_s,
            "python": sys.executable,
        }


def main() -> None:
    """``python -c 'from mergefile.server.zygote import main; main()' DIR KEY CLIENT_PATH0 [AFTER_PID]``"""
    env = dict(os.environ)  # before any import of ours can add to it: the fingerprint's view
    directory, key = Path(sys.argv[1]), sys.argv[2]
    # `-c` put the working directory first on the path; the client has its script's folder there
    # (and a build forked from here changes directory: '' would import from the user's folder)
    sys.path[0] = sys.argv[3]
    after = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    if fingerprint(env) != key:
        log("this process's code or environment does not match the client's; exiting")
        sys.exit(1)
    sys.exit(Server(directory, key, env).run(after))
