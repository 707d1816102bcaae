"""mergefile/_exit.py: the console ends without module teardown but with what exit must do."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_exit_now_joins_threads_runs_atexit_and_flushes(tmp_path) -> None:
    marks = tmp_path / "marks"
    code = textwrap.dedent(
        f"""
        import atexit, sys, threading, time
        from mergefile._exit import exit_now
        def late():
            time.sleep(0.3)
            open({str(marks)!r}, "a").write("thread\\n")
        threading.Thread(target=late).start()  # non-daemon: exit waits for it
        atexit.register(lambda: open({str(marks)!r}, "a").write("atexit\\n"))
        sys.stdout.write("buffered, no newline")
        exit_now(3)
        print("never")
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 3
    assert r.stdout == "buffered, no newline"
    assert marks.read_text().splitlines() == ["thread", "atexit"]


def test_console_main_exits_with_the_commands_code(tmp_path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "mergefile.cli.main", "--config", str(tmp_path / "missing.yml"), "out"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 2 and "error" in r.stderr and "Traceback" not in r.stderr
