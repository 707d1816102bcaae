"""The resident build server (mergefile/server, docs/server.md).

End-to-end tests start real servers (each imports torch once: a few seconds) in a private
folder under /tmp (a unix socket path has 108 bytes) and stop them, and wait for their exit,
when done. Builds go through ``python -m mergefile.cli.entry``, the console script's module.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from mergefile.server import protocol
from mergefile.server.fingerprint import fingerprint, import_environment
from mergefile.server.warm import single_threaded
from mergefile.server.zygote import parse_duration
from mergefile.store.lock import output_lock
from tests.helpers import mergefile_for, run_subprocess, shard_bytes

RECIPE = """
out/m: linear {
    a weight=0.3
    b weight=0.7
}
"""


def mb(env: dict, *args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mergefile.cli.entry", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def status(env: dict) -> list[dict]:
    r = mb(env, "server", "status", "--json")
    return json.loads(r.stdout)


def builds_served(env: dict) -> int:
    return sum(s["builds"] for s in status(env) if s["serves_this_shell"])


def wait_for(predicate, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (our own child, not reaped yet) is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def server_pids(folder: Path) -> list[int]:
    pids = []
    for f in folder.glob("*.json"):
        try:
            pids.append(int(json.loads(f.read_text())["pid"]))
        except (OSError, ValueError, KeyError):
            pass
    return pids


def make_env(root: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERGEBUILD_SERVER")}
    return env | {"MERGEBUILD_SERVER_DIR": str(root / "srv"), "MERGEBUILD_SERVER": "auto"} | extra


def shut_down(env: dict) -> None:
    folder = Path(env["MERGEBUILD_SERVER_DIR"])
    pids = server_pids(folder) if folder.exists() else []
    mb(env, "server", "stop", "--all")
    deadline = time.monotonic() + 20
    for pid in pids:
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def root():
    d = Path(tempfile.mkdtemp(prefix="mbs-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def served():
    """One running server for the module's tests: its environment."""
    d = Path(tempfile.mkdtemp(prefix="mbs-", dir="/tmp"))
    env = make_env(d)
    r = mb(env, "server", "start")
    assert r.returncode == 0, r.stdout + r.stderr
    yield env
    shut_down(env)
    shutil.rmtree(d, ignore_errors=True)


# -- units -------------------------------------------------------------------------------------


def test_fingerprint_follows_the_import_time_environment_only():
    env = {"PATH": "/usr/bin", "OMP_NUM_THREADS": "2", "HF_HOME": "/h"}
    key = fingerprint(env)
    assert fingerprint(dict(env)) == key
    assert fingerprint(env | {"PWD": "/elsewhere", "MERGEBUILD_CACHE_DIR": "/c", "TERM": "xterm"}) == key
    assert fingerprint(env | {"OMP_NUM_THREADS": "1"}) != key  # libgomp reads it when torch loads
    assert fingerprint(env | {"HF_HOME": "/other"}) != key
    assert fingerprint(env | {"PYTHONHASHSEED": "0"}) != key
    assert import_environment(env) == {"HF_HOME": "/h", "OMP_NUM_THREADS": "2"}


def test_fingerprint_follows_import_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", [*sys.path, str(tmp_path)])
    key = fingerprint({})
    time.sleep(0.01)
    (tmp_path / "newpkg").mkdir()  # a package installed into an import folder
    assert fingerprint({}) != key


def test_protocol_passes_messages_and_descriptors():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    r, w = os.pipe()
    big = {"env": {f"V{i}": "x" * 100 for i in range(5000)}}  # ~0.6 MB: more than one send
    t = threading.Thread(target=lambda: (protocol.send(a, big, [w]), protocol.send(a, {"n": 2})))
    t.start()
    message, fds = protocol.recv(b, protocol.MAX_FDS)
    t.join()
    assert message == big and len(fds) == 1
    os.write(fds[0], b"through")  # the same pipe, passed across
    assert os.read(r, 7) == b"through"
    assert protocol.recv(b) == ({"n": 2}, [])
    a.close()
    with pytest.raises(EOFError):
        protocol.recv(b)
    for fd in (r, w, fds[0]):
        os.close(fd)
    b.close()


def test_protocol_rejects_what_is_not_a_message():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.sendall(protocol.HEADER.pack(5) + b"[1,2]")
    with pytest.raises(protocol.ProtocolError, match="JSON object"):
        protocol.recv(b)
    a.sendall(protocol.HEADER.pack(3) + b"{x}")
    with pytest.raises(protocol.ProtocolError, match="not a JSON"):
        protocol.recv(b)
    a.sendall(protocol.HEADER.pack(protocol.MAX_MESSAGE + 1))
    with pytest.raises(protocol.ProtocolError, match="bytes"):
        protocol.recv(b)
    a.sendall(protocol.HEADER.pack(10) + b"{}")
    a.close()
    with pytest.raises(protocol.ProtocolError, match="mid-message"):
        protocol.recv(b)
    b.close()


def test_single_threaded_sees_a_live_thread():
    assert parse_duration("90") == 90 and parse_duration("30m") == 1800 and parse_duration("2h") == 7200
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert not single_threaded()  # a thread that a fork does not end: forking is unsafe
    finally:
        stop.set()
        t.join()


# -- a running server ----------------------------------------------------------------------------


def test_served_build_equals_a_build_in_its_own_process(served, tiny_models, tmp_path):
    models = {"a": tiny_models["a"], "b": tiny_models["b"]}
    (tmp_path / "s").mkdir()
    (tmp_path / "p").mkdir()
    mergefile_for(tmp_path / "s", models, RECIPE)
    mergefile_for(tmp_path / "p", models, RECIPE)
    before = builds_served(served)
    r = mb(served, "-C", str(tmp_path / "s"), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "out/m: built" in r.stdout
    assert builds_served(served) == before + 1  # it went through the server
    assert run_subprocess(tmp_path / "p").returncode == 0
    assert shard_bytes(tmp_path / "s" / "out" / "m") == shard_bytes(tmp_path / "p" / "out" / "m")
    r = mb(served, "-C", str(tmp_path / "s"))
    assert r.returncode == 0 and "up to date" in r.stdout


def test_served_build_keeps_exit_codes_and_streams(served, tiny_models, tmp_path):
    mergefile_for(tmp_path, {"a": tiny_models["a"], "b": tiny_models["b"]}, RECIPE)
    before = builds_served(served)
    r = mb(served, "-C", str(tmp_path), "nope")
    assert r.returncode == 2 and r.stdout == ""
    assert "unknown target 'nope'" in r.stderr and "Traceback" not in r.stderr
    r = mb(served, "-C", str(tmp_path), "-q")
    assert r.returncode == 1  # stale
    r = mb(served, "--bogus")
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr
    r = mb(served, "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: mergebuild")
    r = subprocess.run(
        [sys.executable, "-m", "mergefile.cli.entry", "-C", str(tmp_path), "--quiet"],
        env=served,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert builds_served(served) == before + 5


def test_served_build_takes_the_clients_directory_environment_and_umask(served, tiny_models, tmp_path):
    sub = tmp_path / "project"
    sub.mkdir()
    mergefile_for(sub, {"a": tiny_models["a"], "b": tiny_models["b"]}, RECIPE)
    cache = tmp_path / "elsewhere-cache"
    env = served | {"MERGEBUILD_CACHE_DIR": str(cache)}  # not in the fingerprint: the same server
    before = builds_served(served)
    r = subprocess.run(
        f"umask 027 && exec {sys.executable} -m mergefile.cli.entry -C project --quiet",
        shell=True,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert builds_served(served) == before + 1
    assert (cache / "blobs").is_dir() and not (sub / "cache").exists()
    config = sub / "out" / "m" / "config.json"
    assert config.stat().st_mode & 0o777 == 0o640


def test_other_import_environment_builds_in_its_own_process(served, tiny_models, tmp_path):
    mergefile_for(tmp_path, {"a": tiny_models["a"], "b": tiny_models["b"]}, RECIPE)
    before = builds_served(served)
    r = mb(served | {"OMP_NUM_THREADS": "1"}, "-C", str(tmp_path), "--quiet")
    assert r.returncode == 0, r.stderr
    assert builds_served(served) == before
    r = mb(served | {"MERGEBUILD_SERVER": "off"}, "-C", str(tmp_path), "--quiet")
    assert r.returncode == 0 and builds_served(served) == before


def _waiting_build(env: dict, d: Path, **popen) -> subprocess.Popen:
    """A served build that waits for the output lock the test holds."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mergefile.cli.entry", "-C", str(d), "--quiet"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )
    wait_for(lambda: any(s["running"] for s in status(env)), what="the build to start in the server")
    return proc


def test_interrupting_the_client_interrupts_the_build(served, tiny_models, tmp_path):
    mergefile_for(tmp_path, {"a": tiny_models["a"], "b": tiny_models["b"]}, RECIPE)
    with output_lock(tmp_path / "out" / "m"):
        proc = _waiting_build(served, tmp_path)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert not (tmp_path / "out" / "m").exists()


def test_killing_the_client_kills_the_build(served, tiny_models, tmp_path):
    mergefile_for(tmp_path, {"a": tiny_models["a"], "b": tiny_models["b"]}, RECIPE)
    with output_lock(tmp_path / "out" / "m"):
        proc = _waiting_build(served, tmp_path)
        proc.kill()
        proc.communicate(timeout=60)
        wait_for(lambda: not any(s["running"] for s in status(served)), timeout=30, what="the build to end")
    assert not (tmp_path / "out" / "m").exists()
    r = mb(served, "-C", str(tmp_path), "--quiet")  # the lock is free again: a served build goes through
    assert r.returncode == 0, r.stderr


def test_two_clients_at_once(served, tiny_models, tmp_path):
    mergefile_for(tmp_path, {"a": tiny_models["a"], "b": tiny_models["b"]}, RECIPE)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mergefile.cli.entry", "-C", str(tmp_path), "--quiet"],
            env=served,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert any("built" in out for out, _ in results)
    r = mb(served, "-C", str(tmp_path), "-q")
    assert r.returncode == 0


# -- lifetime ----------------------------------------------------------------------------------


def test_start_status_stop(root):
    env = make_env(root)
    r = mb(env, "server", "status")
    assert r.returncode == 1 and "no build server running" in r.stdout
    try:
        r = mb(env, "server", "start", "--idle", "10m")
        assert r.returncode == 0 and "build server started" in r.stdout, r.stdout + r.stderr
        assert "already running" in mb(env, "server", "start").stdout
        [info] = status(env)
        assert info["serves_this_shell"] and info["idle_s"] == 600 and info["builds"] == 0
        r = mb(env, "server", "status")
        assert r.returncode == 0 and "serves builds here" in r.stdout
        other = mb(env | {"OMP_NUM_THREADS": "1"}, "server", "status")
        assert other.returncode == 1 and "another mergebuild version or environment" in other.stdout
        assert mb(env | {"OMP_NUM_THREADS": "1"}, "server", "stop").stdout.startswith("no build server running")
        r = mb(env, "server", "stop")
        assert f"pid {info['pid']} stops" in r.stdout
        wait_for(lambda: not alive(info["pid"]), timeout=20, what="the server to exit")
        assert not list((root / "srv").glob("*.sock"))
        assert mb(env, "server", "status").returncode == 1
    finally:
        shut_down(env)


def test_server_ends_when_idle_or_when_its_packages_change(root, tiny_models, tmp_path):
    packages = root / "site"
    packages.mkdir()
    env = make_env(root, MERGEBUILD_SERVER_IDLE="3s", PYTHONPATH=str(packages))
    try:
        assert mb(env, "server", "start").returncode == 0
        [info] = status(env)
        wait_for(lambda: not alive(info["pid"]), timeout=30, what="the idle server to exit")
        assert "idle for 3 s" in (root / "srv" / f"{info['fingerprint'][:16]}.log").read_text()

        env["MERGEBUILD_SERVER_IDLE"] = "1h"
        assert mb(env, "server", "start").returncode == 0
        [info] = status(env)
        (packages / "upgraded.py").write_text("")  # a package installed: the imports it holds are old
        wait_for(lambda: not alive(info["pid"]), timeout=30, what="the outdated server to exit")
        mergefile_for(tmp_path, {"a": tiny_models["a"], "b": tiny_models["b"]}, RECIPE)
        r = mb(env, "-C", str(tmp_path), "--quiet")  # no server for the new packages: built here
        assert r.returncode == 0, r.stderr
    finally:
        shut_down(env)


def test_on_starts_a_server_for_the_next_build(root, tiny_models, tmp_path):
    env = make_env(root, MERGEBUILD_SERVER="on")
    mergefile_for(tmp_path, {"a": tiny_models["a"], "b": tiny_models["b"]}, RECIPE)
    try:
        r = mb(env, "-C", str(tmp_path), "--quiet")  # built at once, in its own process
        assert r.returncode == 0 and "built" in r.stdout, r.stderr
        wait_for(lambda: mb(env, "server", "status").returncode == 0, what="the background server")
        r = mb(env, "-C", str(tmp_path))
        assert r.returncode == 0 and "up to date" in r.stdout
        assert builds_served(env) == 1
    finally:
        shut_down(env)


def test_a_server_folder_others_can_enter_is_not_used(root, tiny_models, tmp_path):
    (root / "srv").mkdir(mode=0o755)
    os.chmod(root / "srv", 0o755)
    env = make_env(root, MERGEBUILD_SERVER="on")
    mergefile_for(tmp_path, {"a": tiny_models["a"], "b": tiny_models["b"]}, RECIPE)
    r = mb(env, "-C", str(tmp_path), "--quiet")
    assert r.returncode == 0
    assert "not using a build server" in r.stderr and "mode 0700" in r.stderr
    assert not list((root / "srv").iterdir())
    r = mb(env, "server", "start")
    assert r.returncode == 2 and "mode 0700" in r.stderr


def _take_terminal() -> None:
    """In the child, after setsid: make its stdin (a pty) the controlling terminal."""
    import fcntl
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def test_a_terminal_gets_a_server_by_default_and_a_script_does_not(root, tiny_models, tmp_path):
    import pty

    env = make_env(root)
    env.pop("MERGEBUILD_SERVER")  # the default: on at a terminal, auto otherwise
    mergefile_for(tmp_path, {"a": tiny_models["a"], "b": tiny_models["b"]}, RECIPE)
    try:
        r = mb(env, "-C", str(tmp_path), "--quiet")  # a script: pipes, no terminal
        assert r.returncode == 0 and "build server" not in r.stderr, r.stderr
        time.sleep(1)
        assert not list((root / "srv").glob("*.sock")) if (root / "srv").exists() else True
        assert mb(env, "server", "status").returncode == 1

        master, slave = pty.openpty()  # a person at a terminal: it is the session's controlling terminal
        proc = subprocess.run(
            [sys.executable, "-m", "mergefile.cli.entry", "-C", str(tmp_path), "-B", "--quiet"],
            env=env,
            stdin=slave,
            stderr=slave,
            stdout=subprocess.PIPE,
            text=True,
            timeout=120,
            start_new_session=True,
            preexec_fn=_take_terminal,
        )
        os.close(slave)
        said = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            said += chunk
        os.close(master)
        assert proc.returncode == 0 and "built" in proc.stdout
        assert b"starting a build server in the background" in said, said
        wait_for(lambda: mb(env, "server", "status").returncode == 0, what="the background server")
    finally:
        shut_down(env)


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(") ", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                kids.append(int(entry))
    return kids


def test_a_lost_spare_is_replaced(served, tiny_models, tmp_path):
    """The server keeps one fork ready for the next build; if it dies, builds fork afresh."""
    mergefile_for(tmp_path, {"a": tiny_models["a"], "b": tiny_models["b"]}, RECIPE)
    [info] = [s for s in status(served) if s["serves_this_shell"]]
    wait_for(lambda: len(_children(info["pid"])) == 1, what="the spare")
    [spare] = _children(info["pid"])
    os.kill(spare, signal.SIGKILL)
    before = builds_served(served)
    r = mb(served, "-C", str(tmp_path), "--quiet")
    assert r.returncode == 0, r.stderr
    assert builds_served(served) == before + 1
    wait_for(lambda: len(_children(info["pid"])) == 1 and _children(info["pid"]) != [spare], what="a new spare")


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0]


def test_ctrl_z_stops_and_resumes_the_build_with_its_client(served, tiny_models, tmp_path):
    mergefile_for(tmp_path, {"a": tiny_models["a"], "b": tiny_models["b"]}, RECIPE)
    [info] = [s for s in status(served) if s["serves_this_shell"]]
    with output_lock(tmp_path / "out" / "m"):
        # a process group of its own under this one, as a shell's job: the kernel discards a
        # default SIGTSTP in an orphaned group (this test's own group may be one under CI)
        proc = _waiting_build(served, tmp_path, process_group=0)
        wait_for(lambda: len(_children(info["pid"])) == 2, what="the build and a new spare")
        time.sleep(0.3)
        proc.send_signal(signal.SIGTSTP)  # what a terminal sends on Ctrl-Z
        wait_for(lambda: _state(proc.pid) == "T", timeout=10, what="the client to stop")
        stopped = [p for p in _children(info["pid"]) if _state(p) == "T"]
        assert len(stopped) == 1, _children(info["pid"])  # the build, not the spare
        proc.send_signal(signal.SIGCONT)  # fg / bg
        wait_for(lambda: _state(stopped[0]) != "T", timeout=10, what="the build to resume")
    out, err = proc.communicate(timeout=120)  # the lock is free: the resumed build finishes
    assert proc.returncode == 0, err
    assert (tmp_path / "out" / "m" / "config.json").is_file()


def test_a_server_still_waiting_to_start_can_be_stopped(root):
    env = make_env(root)
    (root / "srv").mkdir(mode=0o700)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # "the build"
    try:
        # the key as a fresh interpreter computes it (this one's import path has pytest's folders)
        key = subprocess.run(
            [
                sys.executable,
                "-c",
                "import os; from mergefile.server.fingerprint import fingerprint; print(fingerprint(dict(os.environ)))",
            ],
            env=env,
            cwd="/",
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        # what client.spawn starts, with the build to wait for named
        zygote = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from mergefile.server.zygote import main; main()",
                str(root / "srv"),
                key,
                sys.path[0],
                str(sleeper.pid),
            ],
            env=env,
            cwd="/",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(
            lambda: (
                (root / "srv" / f"{key[:16]}.lock").exists()
                and (root / "srv" / f"{key[:16]}.lock").read_text().split()[:1] == [str(zygote.pid)]
            ),
            what="the lock",
        )
        [row] = status(env)
        assert row["starting"] and row["pid"] == zygote.pid and not row["serves_this_shell"]
        assert "starting for builds here" in mb(env, "server", "status").stdout
        r = mb(env, "server", "stop")
        assert f"build server pid {zygote.pid} (still starting) stops" in r.stdout
        assert zygote.wait(timeout=20) != 0  # ended by SIGTERM before it imported anything
        assert status(env) == []
    finally:
        sleeper.kill()
        sleeper.wait()


def test_ctrl_z_in_a_group_that_cannot_stop_leaves_the_build_running(served, tiny_models, tmp_path):
    """An orphaned process group (here: a session of its own) ignores a default SIGTSTP: the
    client cannot stop, so neither may its build stay stopped."""
    mergefile_for(tmp_path, {"a": tiny_models["a"], "b": tiny_models["b"]}, RECIPE)
    [info] = [s for s in status(served) if s["serves_this_shell"]]
    with output_lock(tmp_path / "out" / "m"):
        proc = _waiting_build(served, tmp_path, start_new_session=True)
        wait_for(lambda: len(_children(info["pid"])) == 2, what="the build and a new spare")
        time.sleep(0.3)
        proc.send_signal(signal.SIGTSTP)
        time.sleep(1)
        assert _state(proc.pid) != "T"
        assert not [p for p in _children(info["pid"]) if _state(p) == "T"]
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
