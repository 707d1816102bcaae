"""`mergebuild cache stats|ls|gc|verify|clear` and `mergebuild log` on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

from mergefile.cli.main import main
from tests.helpers import cli, cli_json, mergefile_for, read_tensors


def verb(dir: Path, *args: str, cache: Path) -> int:
    """Run ``mergebuild VERB ...`` in ``dir`` with ``cache`` (verbs take their options after the verb)."""
    return main([*args, "-C", str(dir), "--cache-dir", str(cache)])


def verb_json(dir: Path, *args: str, cache: Path, capsys) -> tuple[int, object]:
    capsys.readouterr()
    code = verb(dir, *args, "--json", cache=cache)
    return code, json.loads(capsys.readouterr().out)


TIES = "out/t: ties(base=base) {\n a weight=0.5 density=0.5\n b weight=0.5 density=0.5\n}"


def test_every_stored_key_is_accounted_for(tiny_models, tmp_path, capsys):
    """usage.py mirrors compute.py: after a staged build, every blob is a tensor or stage key in use."""
    cache = tmp_path / "cache"
    mergefile_for(tmp_path, tiny_models, TIES)
    assert cli(tmp_path, cache=cache) == 0
    code, rows = verb_json(tmp_path, "cache", "ls", cache=cache, capsys=capsys)
    assert code == 0 and rows
    kinds = {r["kind"] for r in rows}
    assert "unused" not in kinds
    assert {"tensor", "stage:a", "stage:b"} <= kinds
    assert all(r["target"] == "out/t" and r["bytes"] > 0 for r in rows)


def test_gc_keeps_what_current_targets_use(tiny_models, tmp_path, capsys):
    cache = tmp_path / "cache"
    mf = mergefile_for(tmp_path, tiny_models, TIES + "\nout/l: linear { a weight=1 ; c weight=1 }")
    assert cli(tmp_path, "out/t", "out/l", cache=cache) == 0
    _, before = verb_json(tmp_path, "cache", "ls", cache=cache, capsys=capsys)
    code, rep = verb_json(tmp_path, "cache", "gc", cache=cache, capsys=capsys)
    assert code == 0 and rep["dropped"] == 0 and rep["entries"] == len(before)

    # edit one weight: the old final tensors become unused; the sparsified deltas stay in use
    mf.write_text(mf.read_text().replace("b weight=0.5", "b weight=0.7"))
    assert cli(tmp_path, "out/t", cache=cache) == 0
    _, unused = verb_json(tmp_path, "cache", "ls", "--unused", cache=cache, capsys=capsys)
    assert unused and all(r["kind"] in ("unused", "tensor (on disk)") for r in unused)
    code, dry = verb_json(tmp_path, "cache", "gc", "-n", cache=cache, capsys=capsys)
    assert dry["dropped"] == len(unused) and dry["dry_run"]
    code, rep = verb_json(tmp_path, "cache", "gc", cache=cache, capsys=capsys)
    assert code == 0 and rep["dropped"] == len(unused)
    _, after = verb_json(tmp_path, "cache", "ls", cache=cache, capsys=capsys)
    assert {r["kind"] for r in after} >= {"tensor", "stage:a", "stage:b"}
    assert "unused" not in {r["kind"] for r in after}
    assert {r["target"] for r in after} == {"out/t", "out/l"}

    # the current recipe is still a no-op, and a rebuild of it from scratch hits the cache
    r = cli_json(tmp_path, "out/t", "out/l", cache=cache, capsys=capsys)
    assert all(t["up_to_date"] for t in r["targets"])
    import shutil

    shutil.rmtree(tmp_path / "out/t")
    r = cli_json(tmp_path, "out/t", cache=cache, capsys=capsys)["targets"][0]
    assert r["built"] and r["computed"] == 0 and r["cache_hits"] == len(r["stale"])


def test_gc_max_size_and_keep_unused(tiny_models, tmp_path, capsys):
    cache = tmp_path / "cache"
    mergefile_for(tmp_path, tiny_models, "out/x: linear { a weight=1 ; b weight=1 }")
    assert cli(tmp_path, cache=cache) == 0
    code, rep = verb_json(tmp_path, "cache", "gc", "--keep-unused", "--max-size", "0", cache=cache, capsys=capsys)
    assert code == 0 and rep["evicted"] > 0 and rep["entries"] == 0
    # without a recipe, gc refuses to guess what is in use: a user error
    empty = tmp_path / "empty"
    empty.mkdir()
    capsys.readouterr()
    assert verb(empty, "cache", "gc", cache=cache) == 2
    err = capsys.readouterr().err
    assert "needs the recipe" in err and "--keep-unused" in err and "Traceback" not in err


def test_verify_detects_a_flipped_byte_and_the_next_build_repairs(tiny_models, tmp_path, capsys):
    import shutil

    from mergefile.store.store import Store

    cache = tmp_path / "cache"
    mergefile_for(tmp_path, tiny_models, "out/x: linear { a weight=1 ; b weight=1 }")
    assert cli(tmp_path, cache=cache) == 0
    first = read_tensors(tmp_path / "out/x")
    with Store(cache) as store:
        victim = next(k for k in store.blobs.keys() if store.blobs.info(k)[2] > 1000)
        path = Path(store.blobs.path_of(victim))
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))

    code, rep = verb_json(tmp_path, "cache", "verify", cache=cache, capsys=capsys)
    assert code == 1
    assert [r["key"] for r in rep["corrupt"]] == [victim]
    assert rep["corrupt"][0]["target"] == "out/x" and rep["corrupt"][0]["tensor"]
    assert verb(tmp_path, "cache", "verify", cache=cache) == 0  # dropped: the rest is intact

    shutil.rmtree(tmp_path / "out/x")
    r = cli_json(tmp_path, cache=cache, capsys=capsys)["targets"][0]
    assert r["computed"] == 1 and r["cache_hits"] == len(first) - 1
    out = read_tensors(tmp_path / "out/x")
    assert sorted(out) == sorted(first)
    assert all((out[k] == first[k]).all() for k in out)


def test_stats_log_and_clear(tiny_models, tmp_path, capsys):
    import shutil

    cache = tmp_path / "cache"
    mergefile_for(tmp_path, tiny_models, "out/x: linear { a weight=1 ; b weight=1 }")
    assert cli(tmp_path, cache=cache) == 0
    shutil.rmtree(tmp_path / "out/x")
    assert cli(tmp_path, cache=cache) == 0  # every tensor from the cache
    assert cli(tmp_path, cache=cache) == 0  # up to date
    code, st = verb_json(tmp_path, "cache", "stats", cache=cache, capsys=capsys)
    b = st["builds"]
    assert code == 0 and st["entries"] == 39 and st["volume_bytes"] > 0
    assert b["runs"] == 3 and b["computed"] == 39 and b["hits"] == 39 and b["hit_rate"] == 0.5
    assert b["bytes_saved"] > 0 and b["up_to_date_targets"] == 1
    capsys.readouterr()
    assert verb(tmp_path, "cache", "stats", cache=cache) == 0
    assert "hit rate 50%" in capsys.readouterr().out

    code, runs = verb_json(tmp_path, "log", cache=cache, capsys=capsys)
    assert [r["computed"] for r in runs] == [39, 0, 0] and [r["hits"] for r in runs] == [0, 39, 0]
    assert all(r["finished"] for r in runs)
    capsys.readouterr()
    assert verb(tmp_path, "log", "-2", cache=cache) == 0
    out = capsys.readouterr().out
    assert sum(1 for line in out.splitlines() if "hit" in line.split()[1:3]) == 39
    assert "model.embed_tokens.weight" in out and "hit rate 100%" in out
    code, one = verb_json(tmp_path, "log", runs[0]["run_id"][:18], cache=cache, capsys=capsys)
    assert sum(1 for r in one["records"] if r.get("status") == "computed") == 39
    capsys.readouterr()
    assert verb(tmp_path, "log", "nope", cache=cache) == 2
    assert "no logged run 'nope'" in capsys.readouterr().err

    capsys.readouterr()
    assert verb(tmp_path, "cache", "clear", "--all", cache=cache) == 0
    assert "39 entries" in capsys.readouterr().out
    _, st = verb_json(tmp_path, "cache", "stats", cache=cache, capsys=capsys)
    assert st["entries"] == 0 and st["logged_runs"] == 0
    assert cli(tmp_path, "-q", cache=cache) == 0  # outputs do not depend on the cache
