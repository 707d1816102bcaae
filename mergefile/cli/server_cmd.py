"""``mergebuild server start|stop|status``: the resident build server (docs/server.md).

A server keeps torch and mergebuild imported and forks one process per build, so a build
starts merging at once instead of after ~3 s of imports. Builds use a running server whose
code and environment match (``MERGEBUILD_SERVER=auto``, the default); ``MERGEBUILD_SERVER=on``
also starts one in the background when none is running.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import time
from pathlib import Path

from mergefile.errors import UserError
from mergefile.server import server_dir
from mergefile.server.client import ask, mode, spawn
from mergefile.server.fingerprint import fingerprint
from mergefile.server.zygote import IDLE_ENV, parse_duration


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    start = sub.add_parser("start", help="start a server for this code and environment (and wait for it)")
    start.add_argument(
        "--idle",
        default=None,
        metavar="DURATION",
        help=f"stop after this long without a build, e.g. 30m, 3h (default: ${IDLE_ENV} or 3h)",
    )
    start.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for its imports (default 120)")
    stop = sub.add_parser("stop", help="stop the server for this code and environment (running builds finish)")
    stop.add_argument("--all", action="store_true", help="stop every server of this user, any version")
    status = sub.add_parser("status", help="list servers; exit 0 if one serves this shell's builds")
    status.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    try:
        directory = server_dir.private_dir(create=args.action == "start")
    except server_dir.UnsafeDirectory as e:
        raise UserError(f"cannot use the build server folder: {e}") from None
    key = fingerprint(os.environ)
    if args.action == "start":
        return _start(directory, key, args)
    if directory is None:
        print("[]" if getattr(args, "json", False) else "no build server running")
        return 1 if args.action == "status" else 0
    if args.action == "stop":
        return _stop(directory, key, args.all)
    return _status(directory, key, args.json)


def _start(directory: str, key: str, args: argparse.Namespace) -> int:
    files = {kind: Path(p) for kind, p in server_dir.paths(directory, key).items()}
    sock = files["sock"]
    info = ask(str(sock), {"op": "ping"})
    if info:
        print(f"build server already running: pid {info['pid']} ({sock})")
        return 0
    if args.idle is not None:
        try:
            parse_duration(args.idle)
        except ValueError:
            raise UserError(f"--idle: not a duration: {args.idle!r} (e.g. 90s, 30m, 3h)") from None
        os.environ[IDLE_ENV] = args.idle  # the server reads it from the environment it inherits
    proc = spawn(directory, key)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        info = ask(str(sock), {"op": "ping"})
        if info:
            print(f"build server started: pid {info['pid']}, idle timeout {_duration(info['idle_s'])} ({sock})")
            if mode() == "off":
                print("note: MERGEBUILD_SERVER=off in this environment: builds here will not use it")
            return 0
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    print(f"mergebuild: error: the build server did not start; its log ({files['log']}):")
    print(_tail(files["log"]))
    return 1


def _names(directory: str, key: str, every: bool) -> list[str]:
    """Server names (fingerprint prefixes) to look at: this client's, or every one there."""
    if not every:
        return [server_dir.name(key)]
    names = {
        n.rsplit(".", 1)[0] for n in os.listdir(directory) if n.endswith((".sock", ".lock")) and not n.startswith(".")
    }
    return sorted(names)


def _stop(directory: str, key: str, every: bool) -> int:
    stopped = 0
    for name in _names(directory, key, every):
        sock, lock = Path(directory, f"{name}.sock"), Path(directory, f"{name}.lock")
        reply = ask(str(sock), {"op": "stop"})
        if reply is None:
            held = _held(lock)
            if held is None:
                _clean_dead(sock)
                continue
            pid, phase = held
            if phase == "stopping":
                print(f"build server pid {pid} is already stopping (its running builds finish)")
                stopped += 1
                continue
            try:  # still waiting for its first build to end, or importing: nothing to finish
                os.kill(pid, signal.SIGTERM)
            except OSError:
                continue
            stopped += 1
            print(f"build server pid {pid} (still starting) stops")
            continue
        stopped += 1
        running = f" once its {reply['running']} running build(s) finish" if reply.get("running") else ""
        print(f"build server pid {reply['pid']} stops{running}")
        for _ in range(100):  # it closes its socket before waiting for running builds
            if not sock.exists():
                break
            time.sleep(0.05)
    if not stopped:
        print("no build server running" + ("" if every else " for this code and environment (--all: any)"))
    return 0


def _status(directory: str, key: str, as_json: bool) -> int:
    rows = []
    mine = server_dir.name(key)
    for name in _names(directory, key, every=True):
        sock = Path(directory, f"{name}.sock")
        info = ask(str(sock), {"op": "ping"})
        if info is None:
            held = _held(Path(directory, f"{name}.lock"))
            if held is not None:
                pid, phase = held
                rows.append(
                    {
                        "pid": pid,
                        "phase": phase,
                        "starting": phase == "starting",
                        "serves_this_shell": False,
                        "this_shell_next": name == mine,
                        "builds": 0,
                        "running": 0,
                        "rss_bytes": _rss(pid),
                    }
                )
            else:
                _clean_dead(sock)
            continue
        info["serves_this_shell"] = info.get("fingerprint") == key
        info["phase"] = "serving"
        info["rss_bytes"] = _rss(int(info["pid"]))
        info["socket"] = str(sock)
        rows.append(info)
    if as_json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no build server running")
    for r in [] if as_json else rows:
        rss = f", {r['rss_bytes'] / 2**20:.0f} MiB" if r["rss_bytes"] else ""
        if r.get("phase") == "stopping":
            print(f"pid {r['pid']}: stopping (no new builds; running builds finish){rss}")
            continue
        if r.get("starting"):
            whose = "for builds here" if r["this_shell_next"] else "for another mergebuild version or environment"
            print(f"pid {r['pid']}: starting {whose} (after the build that started it ends){rss}")
            continue
        which = "serves builds here" if r["serves_this_shell"] else "another mergebuild version or environment"
        print(
            f"pid {r['pid']}: {which}; up {_duration(time.time() - r['started'])}, {r['builds']} build(s) served, "
            f"{r['running']} running{rss}; idle timeout {_duration(r['idle_s'])}"
        )
    return 0 if any(r["serves_this_shell"] for r in rows) else 1


def _held(lock: Path) -> tuple[int, str] | None:
    """``(pid, phase)`` of a live server that holds ``lock`` but does not answer on its socket
    (``starting``: waiting for the build that started it, or importing; ``stopping``: its socket
    is closed and it waits for running builds); None if no live server holds it."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            words = os.pread(fd, 64, 0).decode().split()
            pid, phase = int(words[0]), (words[1] if len(words) > 1 else "starting")
        except (OSError, ValueError, IndexError):
            return None
        if not _alive(pid):
            return None
        return pid, ("starting" if phase == "serving" else phase)  # serving, yet no answer: not yet listening
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    """A running process (not a zombie) with this pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _clean_dead(sock: Path) -> None:
    """A socket nobody answers on, whose lock nobody holds: a server that was killed."""
    lock = sock.with_suffix(".lock")
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        fd = None
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        sock.unlink(missing_ok=True)
        sock.with_suffix(".json").unlink(missing_ok=True)
    except OSError:
        pass  # held: it is still starting or stopping
    finally:
        if fd is not None:
            os.close(fd)


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
