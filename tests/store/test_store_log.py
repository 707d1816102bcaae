import os
import threading
from pathlib import Path

import pytest

from mergefile.store.log import BuildLog


def test_records_and_summary(tmp_path):
    log = BuildLog(tmp_path / "logs")
    run = log.start_run(["mergebuild", "out/x"])
    run.record(
        target="out/x",
        tensor="w",
        key="k1",
        status="miss",
        seconds=0.5,
        bytes_read=10,
        bytes_written=20,
        path=Path("/p"),
    )
    run.record(target="out/x", tensor="v", key="k2", status="hit")
    run.close(hits=1, misses=1)
    run.close()  # idempotent
    recs = log.read()
    assert recs[0]["start"] and recs[0]["argv"] == ["mergebuild", "out/x"]
    assert recs[0]["run_id"] == run.run_id and recs[0]["pid"] == os.getpid()
    assert [r.get("status") for r in recs[1:3]] == ["miss", "hit"]
    assert recs[1]["path"] == "/p"  # non-JSON values are stringified, never crash a build
    assert recs[-1]["summary"] is True and recs[-1]["hits"] == 1
    assert log.read(run.run_id) == recs
    with pytest.raises(ValueError):
        run.record(status="late")


def test_runs_oldest_first_and_read_defaults_to_last(tmp_path):
    log = BuildLog(tmp_path)
    ids = []
    for i in range(5):
        with log.start_run([str(i)]) as run:
            run.record(i=i)
        ids.append(run.run_id)
    assert log.runs() == ids and len(set(ids)) == 5
    assert log.read()[1]["i"] == 4
    assert log.read(ids[0])[1]["i"] == 0


def test_prune_keeps_last_n(tmp_path):
    log = BuildLog(tmp_path)
    ids = [log.start_run([]).run_id for _ in range(7)]
    assert log.prune(keep=3) == ids[:4]
    assert log.runs() == ids[4:]
    assert log.prune(keep=50) == []


def test_thread_safe_appends(tmp_path):
    log = BuildLog(tmp_path)
    run = log.start_run([])

    def work(t):
        for i in range(200):
            run.record(thread=t, i=i, pad="x" * 500)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run.close()
    recs = log.read()
    body = [r for r in recs if "thread" in r]
    assert len(body) == 1600
    assert {(r["thread"], r["i"]) for r in body} == {(t, i) for t in range(8) for i in range(200)}


def test_torn_last_line_is_skipped(tmp_path):
    log = BuildLog(tmp_path)
    run = log.start_run([])
    run.record(a=1)
    with open(run.path, "a") as fh:
        fh.write('{"b": ')  # crash mid-write
    assert [r.get("a") for r in log.read()] == [None, 1]


def test_empty_log(tmp_path):
    assert BuildLog(tmp_path / "none").read() == []
