"""``mergebuild ui`` as a command: it prints a tokened loopback URL, serves it, stops on Ctrl-C;
a build started by the CLI shows up in the page's live state."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from mergefile.cli.main import main as cli_main
from tests.ui.ui_support import Client

ENV = {**os.environ, "MERGEBUILD_SERVER": "off"}


def test_ui_prints_its_url_serves_the_recipe_and_stops_on_ctrl_c(demo: Path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "mergefile.cli.main", "ui", "-C", str(demo), "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        url = re.search(r"http://\S+", lines[1]).group(0)
        assert url.startswith("http://127.0.0.1:") and re.search(r"/\?token=[\w-]{20,}$", url)
        assert lines[0].strip() == f"mergebuild ui: {demo / 'Mergefile'}"
        with urllib.request.urlopen(url.replace("/?", "/api/recipe?"), timeout=30) as r:
            body = json.loads(r.read())
        assert body["view"]["ok"] and len(body["view"]["targets"]) == 3
        try:
            urllib.request.urlopen(url.split("?")[0] + "api/recipe", timeout=30)
            raise AssertionError("served without the token")
        except urllib.error.HTTPError as e:
            assert e.code == 403
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "stopped" in err
    assert not (demo / "out").exists()


def test_ui_refuses_bad_flags_with_a_clear_error(demo: Path, tmp_path: Path, capsys):
    assert cli_main(["ui", "-C", str(tmp_path), "--no-browser"]) == 2
    assert f"no Mergefile in {tmp_path}" in capsys.readouterr().err
    assert cli_main(["ui", "-C", str(demo), "--config", "nope.yml", "--no-browser"]) == 2
    assert "config file 'nope.yml' not found" in capsys.readouterr().err
    assert cli_main(["ui", "-C", str(demo), "out/x", "--no-browser"]) == 2
    assert "only given with --config" in capsys.readouterr().err


def test_a_build_started_from_a_terminal_shows_up_live(client: Client, demo: Path):
    client.request("/api/recipe")  # the page has planned: it knows the output folders
    argv = ["-C", str(demo), "--quiet", "out/frank"]
    done: list[int] = []
    terminal = threading.Thread(target=lambda: done.append(cli_main(argv)))  # the CLI's own build
    terminal.start()
    seen_run = seen_lock = False
    while terminal.is_alive():
        _, snap = client.request("/api/builds")
        seen_run |= any(r["argv"] == argv and not r["page"] for r in snap["runs"])
        seen_lock |= "out/frank" in snap["building"]
        time.sleep(0.005)
    assert done == [0] and seen_run and seen_lock
    _, snap = client.request("/api/builds")
    assert snap["runs"] == [] and snap["building"] == {}
    _, view = client.request("/api/plan", {"text": (demo / "Mergefile").read_text()})
    assert next(t for t in view["targets"] if t["name"] == "out/frank")["state"] == "fresh"
