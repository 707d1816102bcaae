import subprocess
import sys

import diskcache
import torch

from mergefile.store import DEFAULT_SIZE_LIMIT, Store, default_cache_dir


def test_default_cache_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("MERGEBUILD_CACHE_DIR", raising=False)
    assert default_cache_dir(tmp_path) == tmp_path / "cache"
    monkeypatch.setenv("MERGEBUILD_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert default_cache_dir(tmp_path) == tmp_path / "elsewhere"


def test_store_layout(tmp_path):
    with Store(tmp_path / "c", size_limit=1 << 20) as s:
        assert s.root == tmp_path / "c"
        assert isinstance(s.meta, diskcache.Cache) and s.meta.eviction_policy == "none"
        assert s.blobs.size_limit == 1 << 20
        s.blobs.put("k", torch.ones(3))
        s.meta.set("bookkeeping", {"x": 1})
        for i in range(40):  # blob pressure never evicts bookkeeping
            s.blobs.put(f"b{i}", torch.ones(16384))
        assert s.meta.get("bookkeeping") == {"x": 1}
        s.log.start_run(["x"]).close()
    assert {p.name for p in (tmp_path / "c").iterdir()} >= {"blobs", "meta", "logs"}
    with Store(tmp_path / "c") as s:  # reopen: same contents, default limit
        assert s.blobs.size_limit == DEFAULT_SIZE_LIMIT and len(s.log.runs()) == 1


def test_package_exports_and_keys_do_not_import_torch():
    code = (
        "import sys, mergefile.store as s\n"
        "from mergefile.store import key_of, output_lock, BuildLog, canonical_json\n"
        "assert 'torch' not in sys.modules\n"
        "for name in s.__all__: getattr(s, name)\n"
        "assert 'torch' not in sys.modules  # even the blob store binds torch lazily"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
