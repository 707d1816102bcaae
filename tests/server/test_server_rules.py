"""When a build server is started and used, and what crosses its socket (docs/server.md).

The rules: only a command that will compute tensors starts a server; inside a batch job (a
scheduler's variables, no controlling terminal) none is used unless asked; a client in another
cgroup is refused; only the variables a build reads cross the socket; ``server status`` tells
a stopping or stopped server apart from a starting one.
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

import pytest

import mergefile
from mergefile.server import client, protocol, server_dir
from mergefile.server.environment import BUILD_ENV, IMPORT_TIME_ENV, batch_job, build_environment
from tests.helpers import mergefile_for
from tests.server.test_server import (  # noqa: F401
    RECIPE,
    alive,
    builds_served,
    make_env,
    mb,
    root,
    served,
    shut_down,
    status,
    wait_for,
)


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["-h"],
        ["--version"],
        ["-n"],
        ["-n", "--explain"],
        ["-nB"],
        ["-q"],
        ["--question"],
        ["status"],
        ["graph"],
        ["cache", "stats"],
        ["log"],
        ["fmt"],
        ["lock"],
        ["export", "out/x"],
        ["server", "status"],
        ["-f", "Mergefile", "graph"],
        ["-C", "proj", "status"],
        ["out/x", "--dry-run"],
        ["yaml", "c.yml", "out", "--help"],
    ],
)
def test_read_only_commands_start_no_server(argv):
    assert not client.computes_tensors(argv)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["out/x"],
        ["-B", "all"],
        ["-j", "2"],
        ["-j2"],
        ["--config", "merge.yml", "out/x"],
        ["-C", "proj"],
        ["yaml", "config.yaml", "merge", "--copy-tokenizer"],
        ["evolve", "out/best"],
        ["--", "-n"],
    ],
)
def test_building_commands_may_start_a_server(argv):
    assert client.computes_tensors(argv)


def test_batch_jobs_get_no_server_unless_they_ask(monkeypatch):
    monkeypatch.setattr(client, "controlling_terminal", lambda: True)
    monkeypatch.setattr(client, "interactive", lambda: True)
    assert client.mode({}) == "on"
    for name in ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "FLUX_JOB_ID"):
        assert batch_job({name: "42"}) == name
        assert client.mode({name: "42"}) == "off"
        assert client.mode({name: "42", "MERGEBUILD_SERVER": "on"}) == "on"  # asked: honoured
        assert client.mode({name: "42", "MERGEBUILD_SERVER": "auto"}) == "auto"
    assert batch_job({"JOB_ID": "7"}) is None  # too common a name alone
    assert batch_job({"JOB_ID": "7", "SGE_ROOT": "/opt/sge"}) == "JOB_ID"
    monkeypatch.setattr(client, "controlling_terminal", lambda: False)  # cron, systemd, CI runners
    assert client.mode({}) == "off"
    assert client.mode({"MERGEBUILD_SERVER": "on"}) == "on"
    monkeypatch.setattr(client, "controlling_terminal", lambda: True)
    monkeypatch.setattr(client, "interactive", lambda: False)  # a script run from a terminal
    assert client.mode({}) == "auto"


def test_only_what_a_build_reads_crosses_the_socket(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_x")
    monkeypatch.setenv("SSH_AUTH_SOCK", "/tmp/agent")
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    monkeypatch.setenv("MERGEBUILD_CACHE_DIR", "/c")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    sent = client.client_state()["env"]
    assert "AWS_SECRET_ACCESS_KEY" not in sent and "GITHUB_TOKEN" not in sent and "SSH_AUTH_SOCK" not in sent
    assert sent["HF_TOKEN"] == "hf_x" and sent["MERGEBUILD_CACHE_DIR"] == "/c" and sent["OMP_NUM_THREADS"] == "2"
    assert build_environment({"PATH": "/bin", "EDITOR": "vi"}) == {"PATH": "/bin"}
    assert all(prefix in BUILD_ENV for prefix in IMPORT_TIME_ENV)  # the fingerprint's view crosses too


def test_every_variable_mergebuild_reads_crosses_the_socket():
    """A variable the code reads but the socket drops would make a served build differ."""
    package = Path(mergefile.__file__).parent
    pattern = re.compile(r"""(?:environ(?:\.get)?\(?\[?|getenv\()\s*["']([A-Z][A-Z0-9_]*)["']""")
    read = set()
    for path in package.rglob("*.py"):
        read.update(pattern.findall(path.read_text()))
    assert {"HF_HUB_OFFLINE", "XDG_CACHE_HOME"} <= read  # the pattern finds what it should
    missing = sorted(name for name in read if not name.startswith(BUILD_ENV))
    assert not missing, f"read by mergebuild but not passed to served builds: {missing}"


def test_help_status_and_dry_runs_start_nothing_even_when_on(root, tiny_models, tmp_path):  # noqa: F811
    env = make_env(root, MERGEBUILD_SERVER="on")
    mergefile_for(tmp_path, {"a": tiny_models["a"], "b": tiny_models["b"]}, RECIPE)
    try:
        for args in (
            ["--help"],
            ["-C", str(tmp_path), "-n"],
            ["status", "-C", str(tmp_path)],
            ["-C", str(tmp_path), "-q"],
        ):
            r = mb(env, *args)
            assert r.returncode in (0, 1), r.stderr
        time.sleep(1.0)  # a spawned server would have made its folder and lock by now
        assert not (root / "srv").exists(), list((root / "srv").iterdir())
        r = mb(env, "-C", str(tmp_path), "--quiet")  # a build: starts one for the next builds
        assert r.returncode == 0, r.stderr
        wait_for(lambda: mb(env, "server", "status").returncode == 0, what="the background server")
    finally:
        shut_down(env)


def test_a_batch_job_builds_in_its_own_process(served, tiny_models, tmp_path):  # noqa: F811
    mergefile_for(tmp_path, {"a": tiny_models["a"], "b": tiny_models["b"]}, RECIPE)
    job = {k: v for k, v in served.items() if k != "MERGEBUILD_SERVER"} | {"SLURM_JOB_ID": "1234"}
    before = builds_served(served)
    r = mb(job, "-C", str(tmp_path), "--quiet")
    assert r.returncode == 0, r.stderr
    assert builds_served(served) == before
    r = mb(job | {"MERGEBUILD_SERVER": "auto"}, "-C", str(tmp_path), "-B", "--quiet")  # asked for
    assert r.returncode == 0, r.stderr
    assert builds_served(served) == before + 1


def test_a_client_in_another_cgroup_is_refused(served):  # noqa: F811
    directory = served["MERGEBUILD_SERVER_DIR"]
    [info] = [s for s in status(served) if s["serves_this_shell"]]
    sock = server_dir.paths(directory, info["fingerprint"])["sock"]
    state = client.client_state() | {"cgroup": "0::/user.slice/elsewhere.scope\n"}
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(10)
    conn.connect(sock)
    null = os.open(os.devnull, os.O_RDWR)
    try:
        protocol.send(
            conn,
            {"op": "build", "fingerprint": info["fingerprint"], "argv": ["--version"], "state": state},
            [null, null, null],
        )
        reply, _ = protocol.recv(conn)
    finally:
        os.close(null)
        conn.close()
    assert "cgroup" in reply.get("refused", ""), reply


def test_status_never_calls_a_stopping_or_stopped_server_starting(root):  # noqa: F811
    env = make_env(root)
    try:
        assert mb(env, "server", "start").returncode == 0
        [info] = status(env)
        r = mb(env, "server", "stop")
        assert f"pid {info['pid']} stops" in r.stdout
        for _ in range(40):  # right after the stop, until it has exited
            r = mb(env, "server", "status")
            assert "starting" not in r.stdout, r.stdout
            if not alive(info["pid"]):
                break
        wait_for(lambda: not alive(info["pid"]), timeout=20, what="the server to exit")
        r = mb(env, "server", "status")
        assert r.returncode == 1 and "no build server running" in r.stdout and "starting" not in r.stdout
    finally:
        shut_down(env)
