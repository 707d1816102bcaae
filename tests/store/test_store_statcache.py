import os
import time

import diskcache
import pytest
import torch
from safetensors.torch import save_file

from mergefile.store.statcache import StatCache

OLD_S = 100.0  # seconds in the past: far from racy


def make_file(path, value=1.0):
    save_file({"a": torch.full((4, 4), value), "b": torch.arange(6, dtype=torch.int64)}, str(path))
    age(path)
    return path


def age(path, seconds=OLD_S):
    t = time.time() - seconds
    os.utime(path, (t, t))


@pytest.fixture
def sc(tmp_path, hasher):
    with diskcache.Cache(str(tmp_path / "meta"), eviction_policy="none") as cache:
        yield StatCache(cache, hasher=hasher)


def test_second_call_hashes_nothing(tmp_path, sc, infos_of):
    f = make_file(tmp_path / "m.safetensors")
    infos = infos_of(f)
    first = sc.digests(str(f), infos)
    assert set(first) == {"a", "b"} and sc.files_hashed == 1
    assert sc.bytes_hashed == sum(i.nbytes for i in infos)
    second = sc.digests(str(f), infos)
    assert second == first
    assert (sc.files_hashed, sc.bytes_hashed, sc.hits) == (1, sum(i.nbytes for i in infos), 1)


def test_entry_survives_a_new_statcache_and_symlinks(tmp_path, hasher, infos_of):
    f = make_file(tmp_path / "m.safetensors")
    link = tmp_path / "link.safetensors"
    link.symlink_to(f)
    with diskcache.Cache(str(tmp_path / "meta")) as cache:
        StatCache(cache, hasher=hasher).digests(str(f), infos_of(f))
        again = StatCache(cache, hasher=hasher)
        again.digests(str(link), infos_of(link))
        assert again.files_hashed == 0 and again.hits == 1


def test_touching_mtime_rehashes(tmp_path, sc, infos_of):
    f = make_file(tmp_path / "m.safetensors")
    sc.digests(str(f), infos_of(f))
    age(f, OLD_S - 10)
    sc.digests(str(f), infos_of(f))
    assert sc.files_hashed == 2


def test_changed_size_rehashes(tmp_path, sc, infos_of):
    f = make_file(tmp_path / "m.safetensors")
    d1 = sc.digests(str(f), infos_of(f))
    st = f.stat()
    save_file({"a": torch.full((4, 4), 1.0), "b": torch.arange(7, dtype=torch.int64)}, str(f))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: only size differs
    d2 = sc.digests(str(f), infos_of(f))
    assert sc.files_hashed == 2
    assert d2["a"] == d1["a"] and d2["b"] != d1["b"]


def test_changed_byte_same_stat_shape_gives_new_digest(tmp_path, sc, infos_of):
    f = make_file(tmp_path / "m.safetensors", 1.0)
    d1 = sc.digests(str(f), infos_of(f))
    info_a = next(i for i in infos_of(f) if i.name == "a")
    st = f.stat()
    with open(f, "r+b") as fh:  # flip one byte of tensor "a" in place, keep size and mtime
        fh.seek(info_a.begin)
        byte = fh.read(1)
        fh.seek(info_a.begin)
        fh.write(bytes([byte[0] ^ 0xFF]))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    d2 = sc.digests(str(f), infos_of(f))  # ctime moved: still caught
    assert d2["a"] != d1["a"] and d2["b"] == d1["b"]


def test_racy_entry_is_rehashed_once_clean(tmp_path, sc, infos_of):
    f = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(3)}, str(f))  # mtime = now: racy against the entry write time
    sc.digests(str(f), infos_of(f))
    sc.digests(str(f), infos_of(f))
    assert sc.files_hashed == 2  # racy -> not trusted
    age(f)
    sc.digests(str(f), infos_of(f))
    sc.digests(str(f), infos_of(f))
    assert sc.files_hashed == 3 and sc.hits == 1


def test_racy_window_with_small_slack(tmp_path, hasher, infos_of):
    f = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(3)}, str(f))
    with diskcache.Cache(str(tmp_path / "meta")) as cache:
        sc = StatCache(cache, hasher=hasher, racy_slack_ns=0)
        sc.digests(str(f), infos_of(f))
        time.sleep(0.05)
        sc.digests(str(f), infos_of(f))  # entry written after mtime: clean
        assert sc.files_hashed == 1 and sc.hits == 1


def test_missing_tensors_hash_only_those(tmp_path, sc, infos_of):
    f = make_file(tmp_path / "m.safetensors")
    infos = infos_of(f)
    only_a = [i for i in infos if i.name == "a"]
    sc.digests(str(f), only_a)
    full = sc.digests(str(f), infos)
    assert set(full) == {"a", "b"} and sc.files_hashed == 2
    assert sc.bytes_hashed == sum(i.nbytes for i in infos)
    sc.digests(str(f), infos)
    assert sc.files_hashed == 2 and sc.hits == 1


def test_file_changing_during_hash_is_not_recorded(tmp_path, infos_of):
    f = make_file(tmp_path / "m.safetensors")

    def sneaky(path, infos):
        out = {i.name: "x" for i in infos}
        age(f, OLD_S - 1)  # someone rewrites the file while we read it
        return out

    with diskcache.Cache(str(tmp_path / "meta")) as cache:
        sc = StatCache(cache, hasher=sneaky)
        sc.digests(str(f), infos_of(f))
        sc.digests(str(f), infos_of(f))
        assert sc.files_hashed == 2


# ---- record / known: digests taken while a build reads (run/deferred.py) -----------------------


def _ident(path):
    from mergefile.store.statcache import identity

    return identity(os.stat(path))


def test_records_of_different_tensors_merge(tmp_path, sc, infos_of, hasher):
    f = make_file(tmp_path / "m.safetensors")
    a, b = infos_of(f)
    d = hasher(str(f), [a, b])
    ident = _ident(f)
    assert sc.known(str(f), [a, b]) == {}
    assert sc.record(str(f), ident, {"a": (a.begin, a.end, d["a"])})
    assert sc.record(str(f), ident, {"b": (b.begin, b.end, d["b"])})  # another job, later
    assert sc.known(str(f), [a, b]) == d
    assert sc.digests(str(f), [a, b]) == d and sc.files_hashed == 0


def test_no_record_for_a_file_changed_since_reading_began(tmp_path, sc, infos_of, hasher):
    f = make_file(tmp_path / "m.safetensors")
    infos = infos_of(f)
    ident = _ident(f)
    d = hasher(str(f), infos)
    make_file(f, value=2.0)  # rewritten after the hash
    os.utime(f, (time.time() - OLD_S + 5, time.time() - OLD_S + 5))
    assert not sc.record(str(f), ident, {i.name: (i.begin, i.end, d[i.name]) for i in infos})
    assert sc.known(str(f), infos) == {}


def test_a_racy_entrys_digests_are_not_carried_into_a_new_record(tmp_path, sc, infos_of, hasher):
    from mergefile.store.statcache import _PREFIX

    f = make_file(tmp_path / "m.safetensors")
    a, b = infos_of(f)
    age(f, 0)  # modified just now: an entry written now cannot vouch for it (same tick)
    ident = _ident(f)
    assert sc.record(str(f), ident, {"a": (a.begin, a.end, "maybe-stale")})
    assert sc.record(str(f), ident, {"b": (b.begin, b.end, hasher(str(f), [b])["b"])})
    entry = sc._cache.get(_PREFIX + os.path.realpath(f))
    assert set(entry["tensors"]) == {"b"}
