import os
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from safetensors import safe_open

from mergefile.store.blobs import BlobStore

LIMIT = 2**30


@pytest.fixture
def store(tmp_path):
    s = BlobStore(tmp_path / "blobs", LIMIT)
    yield s
    s.close()


def blob_file(store, key):
    return store.path_of(key)


CASES = {
    "f32": torch.randn(5, 7),
    "f16": torch.randn(3, 4).half(),
    "bf16": torch.randn(64, 33).bfloat16(),  # small: read path
    "bf16_big": torch.randn(256, 300).bfloat16(),  # large: mmap path
    "i64": torch.arange(-10, 10, dtype=torch.int64).reshape(4, 5),
    "u8": torch.arange(256, dtype=torch.uint8),
    "bool": torch.tensor([True, False, True]),
    "scalar": torch.tensor(3.25),
    "empty": torch.empty(0, 4),
    "empty_f16": torch.empty(3, 0, dtype=torch.float16),
    "noncontig": torch.randn(6, 8).t(),
    "grad": torch.randn(4, requires_grad=True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip(store, name):
    t = CASES[name]
    n = store.put(name, t)
    assert n > t.numel() * t.element_size()
    back = store.get(name, verify=True)
    assert back is not None
    assert back.dtype == t.dtype and back.shape == t.shape
    assert torch.equal(back, t.detach())
    assert store.info(name) == (store.info(name)[0], tuple(t.shape), t.numel() * t.element_size())


def test_blob_is_a_safetensors_file(store):
    t = torch.randn(300, 200).bfloat16()
    store.put("k", t)
    with safe_open(blob_file(store, "k"), "pt") as f:
        assert list(f.keys()) == ["t"]
        assert torch.equal(f.get_tensor("t"), t)
        meta = f.metadata()
    assert meta["key"] == "k" and len(meta["xxh3"]) == 32
    assert store.info("k") == ("BF16", (300, 200), 300 * 200 * 2)


def test_put_is_idempotent(store):
    t = torch.randn(100, 100)
    assert store.put("k", t) > 0
    path = blob_file(store, "k")
    assert store.put("k", t) == 0
    assert blob_file(store, "k") == path  # no rewrite
    assert len(store) == 1 and store.bytes_written > 0


def test_unsupported_dtype(store):
    with pytest.raises(TypeError):
        store.put("k", torch.zeros(2, dtype=torch.complex128))


def test_missing_and_counters(store):
    assert store.get("nope") is None and store.info("nope") is None
    store.put("k", torch.ones(10))
    store.get("k")
    assert (store.hits, store.misses, store.bytes_read) == (1, 1, 40)


def _mapped_files(ptr: int) -> list[str]:
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= ptr < hi:
                return parts[5:]
    return []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc needed")
def test_get_is_zero_copy_mmap(store):
    store.put("big", torch.randn(512, 512))
    t = store.get("big")
    assert _mapped_files(t.data_ptr()) == [os.path.realpath(blob_file(store, "big"))]


def _rss_anon() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc needed")
def test_get_of_100mb_does_not_copy(store):
    src = torch.ones(25 * 2**20)  # 100 MB
    store.put("big", src)
    del src
    before = _rss_anon()
    t = store.get("big", verify=True)
    assert float(t[::4096].sum()) == len(range(0, 25 * 2**20, 4096))
    t.sum()  # touch every page
    assert _rss_anon() - before < 20 * 2**20


def test_writing_into_result_does_not_touch_cache(store):
    store.put("k", torch.zeros(256, 256))
    t = store.get("k")
    t += 1
    assert torch.equal(store.get("k", verify=True), torch.zeros(256, 256))


def _flip_byte(path, offset_from_end=1):
    with open(path, "r+b") as fh:
        fh.seek(-offset_from_end, os.SEEK_END)
        b = fh.read(1)
        fh.seek(-offset_from_end, os.SEEK_END)
        fh.write(bytes([b[0] ^ 0x01]))


@pytest.mark.parametrize("shape", [(16,), (256, 256)])  # read path and mmap path
def test_flipped_byte_detected_by_verify(store, shape):
    store.put("k", torch.randn(shape))
    _flip_byte(blob_file(store, "k"))
    assert store.get("k") is not None  # unverified reads trust the bytes
    assert store.get("k", verify=True) is None
    assert "k" not in store and len(store) == 0


def test_verify_all_drops_corrupt(store):
    for i in range(5):
        store.put(f"k{i}", torch.full((1000,), float(i)))
    _flip_byte(blob_file(store, "k3"), 10)
    assert store.verify_all() == ["k3"]
    assert sorted(store.keys()) == ["k0", "k1", "k2", "k4"]


def test_truncated_or_garbage_blob_is_a_miss(store):
    store.put("a", torch.randn(300, 300))
    store.put("b", torch.randn(10))
    with open(blob_file(store, "a"), "r+b") as fh:
        fh.truncate(1000)
    with open(blob_file(store, "b"), "wb") as fh:
        fh.write(b"\x01")
    assert store.get("a") is None and store.get("b") is None
    assert len(store) == 0


def test_blob_under_wrong_key_is_rejected(store):
    store.put("a", torch.randn(10))
    store.put("b", torch.randn(10))
    with open(blob_file(store, "a"), "rb") as src, open(blob_file(store, "b"), "wb") as dst:
        dst.write(src.read())
    assert store.get("b") is None


def test_size_limit_eviction(tmp_path):
    limit = 1 << 20
    s = BlobStore(tmp_path / "small", limit)
    for i in range(40):
        s.put(f"k{i}", torch.full((16384,), float(i)))  # 64 KiB each
        s.get("k0")  # keep k0 recently used
        assert s.volume() <= limit
    assert "k0" in s and "k39" in s and "k1" not in s
    assert 0 < len(s) < 40


def test_evict_to_and_clear(store):
    for i in range(10):
        store.put(f"k{i}", torch.full((16384,), float(i)))
    store.get("k0")
    before = store.volume()
    freed = store.evict_to(before - 3 * 65536)
    assert freed >= 3 * 65536 and store.volume() <= before - 3 * 65536
    assert "k0" in store and "k1" not in store
    assert store.delete("k0") and not store.delete("k0")
    store.clear()
    assert len(store) == 0 and list(store.keys()) == []


def test_threads_share_one_store(store):
    def work(i):
        shared = torch.full((5000,), 7.0)
        own = torch.full((5000,), float(i))
        store.put("shared", shared)
        store.put(f"own{i}", own)
        return torch.equal(store.get("shared", verify=True), shared) and torch.equal(
            store.get(f"own{i}", verify=True), own
        )

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(work, range(64)))
    assert len(store) == 65


WORKER = textwrap.dedent("""
    import sys, torch
    from mergefile.store.blobs import BlobStore
    s = BlobStore(sys.argv[1], 2**30)
    me = int(sys.argv[2])
    for i in range(30):
        shared = torch.full((20000,), float(i))
        own = torch.full((20000,), float(1000 * me + i))
        s.put(f"shared{i}", shared)
        s.put(f"own{me}-{i}", own)
        for k, t in ((f"shared{i}", shared), (f"own{me}-{i}", own)):
            got = s.get(k, verify=True)
            assert got is not None and torch.equal(got, t), k
    print("ok")
""")


def test_concurrent_processes(tmp_path):
    d = str(tmp_path / "blobs")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, d, str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for i in range(4)
    ]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == "ok", err
    s = BlobStore(d, 2**30)
    assert len(s) == 30 + 4 * 30 and s.verify_all() == []


KILLED_WRITER = textwrap.dedent("""
    import sys, time, torch
    from mergefile.store import blobs
    orig, calls = blobs._BlobReader.read, [0]
    def stalling_read(self, n=-1):
        calls[0] += 1
        if calls[0] == 3:  # header and one 4 MiB chunk are on disk
            print("MID", flush=True)
            time.sleep(120)
        return orig(self, n)
    blobs._BlobReader.read = stalling_read
    blobs.BlobStore(sys.argv[1], 2**30).put("k", torch.ones(4 * 2**20))
""")


def test_killed_writer_leaves_no_visible_blob(tmp_path):
    d = tmp_path / "blobs"
    p = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(d)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "MID"
        partial = list(d.glob("*/*/*.val"))
        assert len(partial) == 1 and 0 < partial[0].stat().st_size < 16 * 2**20
        s = BlobStore(d, 2**30)
        assert "k" not in s and s.get("k") is None  # mid-write: invisible
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert "k" not in s and len(s) == 0 and s.get("k") is None
    assert s.sweep_orphans(min_age_s=3600) == 0  # too young: might be a live writer
    assert s.put("k", torch.ones(4 * 2**20)) > 0
    orphan_size = partial[0].stat().st_size
    assert s.sweep_orphans(min_age_s=0) == orphan_size
    assert not partial[0].exists()
    assert torch.equal(s.get("k", verify=True), torch.ones(4 * 2**20))
