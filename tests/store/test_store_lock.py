import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from mergefile.errors import LockedError, UserError
from mergefile.store.lock import lock_path, output_lock

HOLDER = textwrap.dedent("""
    import sys, time
    from mergefile.store.lock import output_lock
    with output_lock(sys.argv[1]):
        print("LOCKED", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def hold(out, seconds):
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "LOCKED"
    return p


def test_lock_file_is_a_sibling_removed_on_release(tmp_path):
    out = tmp_path / "deep" / "out" / "math"
    with output_lock(out) as path:
        assert path == lock_path(out) == tmp_path / "deep" / "out" / ".math.mergebuild.lock"
        assert path.read_text().strip() == str(os.getpid())
    assert not out.exists()  # only the parent is created
    assert list(out.parent.iterdir()) == []  # no litter beside the output


def test_waiter_on_a_deleted_lock_file_locks_the_new_one(tmp_path):
    """The holder deletes the file it locked: a waiter that was blocked on that inode must
    not count it as held while a newcomer holds the file now at the path."""
    out = tmp_path / "out"
    p = hold(out, 0.5)
    inside, overlaps, errors = [], [], []

    def waiter():
        try:
            with output_lock(out) as path:
                inside.append(path.read_text().strip())
                if len(inside) > 1:
                    overlaps.append(list(inside))
                time.sleep(0.2)
                inside.pop()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=waiter) for _ in range(4)]
    for t in threads[:2]:  # blocked on the holder's file
        t.start()
    p.wait()
    for t in threads[2:]:  # newcomers: they find the path gone and create a new file
        t.start()
    for t in threads:
        t.join()
    assert not overlaps and not errors and not lock_path(out).exists()


def test_second_process_waits_and_sees_holder_pid(tmp_path):
    p = hold(tmp_path / "out", 1.0)
    seen = []
    t0 = time.monotonic()
    with output_lock(tmp_path / "out", on_wait=seen.append):
        waited = time.monotonic() - t0
    p.wait()
    assert seen == [p.pid] and waited > 0.3


def test_no_wait_raises_with_pid(tmp_path):
    p = hold(tmp_path / "out", 30)
    try:
        seen = []
        msg = rf"is being built by another mergebuild \(pid {p.pid}\)"
        with pytest.raises(LockedError, match=msg):
            with output_lock(tmp_path / "out", wait=False, on_wait=seen.append):
                pass
        assert seen == [p.pid]
        assert issubclass(LockedError, UserError)
    finally:
        p.kill()
        p.wait()


def test_timeout_raises(tmp_path):
    p = hold(tmp_path / "out", 30)
    try:
        t0 = time.monotonic()
        with pytest.raises(LockedError, match=str(p.pid)):
            with output_lock(tmp_path / "out", timeout=0.3):
                pass
        assert 0.25 < time.monotonic() - t0 < 5
    finally:
        p.kill()
        p.wait()


def test_killed_holder_releases(tmp_path):
    p = hold(tmp_path / "out", 60)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert lock_path(tmp_path / "out").exists()  # a killed holder cannot clean up...
    with output_lock(tmp_path / "out", wait=False) as path:
        assert path.read_text().strip() == str(os.getpid())
    assert not path.exists()  # ...the next build removes its file


def test_released_on_exception_and_reusable(tmp_path):
    with pytest.raises(RuntimeError):
        with output_lock(tmp_path / "out"):
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with output_lock(tmp_path / "out", wait=False):
        pass


def test_threads_in_one_process_exclude_each_other(tmp_path):
    inside, overlaps = [], []

    def work():
        with output_lock(tmp_path / "out"):
            inside.append(1)
            if len(inside) > 1:
                overlaps.append(1)
            time.sleep(0.02)
            inside.pop()

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not overlaps


def test_different_outputs_do_not_block(tmp_path):
    with output_lock(tmp_path / "a"):
        with output_lock(tmp_path / "b", wait=False):
            pass
