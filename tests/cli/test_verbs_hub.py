"""Hub models from a local Hugging Face cache (HF_HUB_OFFLINE=1), Mergefile.lock, push --dry-run.

The cache is built in tmp exactly as huggingface_hub lays it out: ``models--org--name/`` with
``blobs/<sha256 | git sha1>``, ``snapshots/<commit>/<file>`` symlinks and ``refs/main``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.cli.test_verbs_cache import verb
from tests.helpers import assert_same_tensors, cli, mergefile_for, read_tensors


def add_snapshot(cache: Path, repo: str, src: Path, ref: str = "main") -> str:
    """Put the files of model folder ``src`` into ``cache`` as a commit of ``repo``; ``ref`` points at it."""
    root = cache / ("models--" + repo.replace("/", "--"))
    files = {p.name: p.read_bytes() for p in sorted(src.iterdir()) if p.is_file()}
    commit = hashlib.sha1(
        repr(sorted((n, hashlib.sha256(b).hexdigest()) for n, b in files.items())).encode()
    ).hexdigest()
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    (root / "blobs").mkdir(exist_ok=True)
    for name, data in files.items():
        if name.endswith(".safetensors"):
            blob = hashlib.sha256(data).hexdigest()
        else:
            blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        (root / "blobs" / blob).write_bytes(data)
        if not (snap / name).exists():
            os.symlink(f"../../blobs/{blob}", snap / name)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / ref).write_text(commit)
    return commit


@pytest.fixture
def hub(tiny_models, tmp_path, monkeypatch) -> dict[str, str]:
    """org/base, org/a, org/b in a fresh offline HF cache; returns repo -> commit."""
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    return {f"org/{n}": add_snapshot(home / "hub", f"org/{n}", tiny_models[n]) for n in ("base", "a", "b")}


HUB_RECIPE = """
model base = hf("org/base")
model a = hf("org/a", revision="main")
out/x: task_arithmetic(base=base) { a weight=0.5 }
"""


def test_hub_models_resolve_from_the_cache_without_hashing(tiny_models, hub, tmp_path, capsys, monkeypatch):
    w, cache = tmp_path / "w", tmp_path / "cache"
    w.mkdir()
    (w / "Mergefile").write_text(HUB_RECIPE)
    from mergefile.io import reader

    with monkeypatch.context() as m:  # the blob name is the digest: planning hashes nothing
        m.setattr(reader, "digest_tensors", lambda *a, **k: pytest.fail("a hub file was hashed"))
        assert cli(w, "-n", cache=cache) == 0
        assert cli(w, cache=cache) == 0
        assert cli(w, "-q", cache=cache) == 0
    local = tmp_path / "local"
    local.mkdir()
    mergefile_for(local, tiny_models, "out/x: task_arithmetic(base=base) { a weight=0.5 }")
    assert cli(local, cache=tmp_path / "cache2") == 0
    assert_same_tensors(read_tensors(w / "out/x"), read_tensors(local / "out/x"))

    card = (w / "out/x/README.md").read_text()
    import yaml

    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"] == ["org/a", "org/base"]
    assert meta["tags"] == ["merge", "mergebuild"] and meta["library_name"] == "transformers"
    assert f"commit {hub['org/a'][:12]}" in card and "arxiv.org" in card and "a weight=0.5" in card
    cfg = yaml.safe_load((w / "out/x/mergebuild_config.yml").read_text())
    assert cfg["base_model"] == "org/base" and cfg["models"] == [{"model": "org/a", "parameters": {"weight": 0.5}}]


def test_missing_hub_model_is_a_user_error(hub, tmp_path, capsys):
    (tmp_path / "Mergefile").write_text('model z = hf("org/zzz")\nout/x: linear { z weight=1 }\n')
    capsys.readouterr()
    assert cli(tmp_path, cache=tmp_path / "cache") == 2
    err = capsys.readouterr().err
    assert "cannot resolve hub model 'org/zzz'" in err and "Traceback" not in err


def test_lock_pins_hub_commits(tiny_models, hub, tmp_path, capsys):
    cache = tmp_path / "cache"
    (tmp_path / "Mergefile").write_text(HUB_RECIPE)
    capsys.readouterr()
    assert verb(tmp_path, "lock", cache=cache) == 0
    lock = json.loads((tmp_path / "Mergefile.lock").read_text())
    rec = lock["models"]["hf:org/a@main"]
    assert rec["commit"] == hub["org/a"] and rec["repo"] == "org/a" and rec["revision"] == "main"
    assert rec["files"]["model.safetensors"].startswith("sha256:")
    assert rec["files"]["config.json"].startswith("git-sha1:")
    text = (tmp_path / "Mergefile.lock").read_text()
    assert cli(tmp_path, cache=cache) == 0

    # upstream moves on: main now points at other weights
    new = add_snapshot(Path(os.environ["HF_HUB_CACHE"]), "org/a", tiny_models["c"])
    assert new != hub["org/a"]
    assert cli(tmp_path, "-q", cache=cache) == 0  # the lock holds the build to the pinned commit
    assert verb(tmp_path, "lock", "--check", cache=cache) == 0
    assert verb(tmp_path, "lock", cache=cache) == 0 and (tmp_path / "Mergefile.lock").read_text() == text
    (tmp_path / "Mergefile.lock").rename(tmp_path / "saved.lock")
    assert cli(tmp_path, "-q", cache=cache) == 1  # unlocked, main resolves to the new commit
    (tmp_path / "saved.lock").rename(tmp_path / "Mergefile.lock")

    capsys.readouterr()
    assert verb(tmp_path, "lock", "--update", cache=cache) == 0
    out = capsys.readouterr().out
    assert f"hf:org/a@main: locked commit {hub['org/a']} but resolved {new}" in out
    assert json.loads((tmp_path / "Mergefile.lock").read_text())["models"]["hf:org/a@main"]["commit"] == new
    assert cli(tmp_path, "-q", cache=cache) == 1


def test_lock_mismatch_is_reported(tiny_models, hub, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    cache = tmp_path / "cache"
    w = tmp_path / "w"
    shutil.copytree(tiny_models["b"], w / "models" / "b")
    (w / "Mergefile").write_text(HUB_RECIPE.replace("{ a weight=0.5 }", '{ a weight=0.5 ; "models/b" weight=0.5 }'))
    assert verb(w, "lock", cache=cache) == 0
    assert "path:models/b" in json.loads((w / "Mergefile.lock").read_text())["models"]
    assert cli(w, cache=cache) == 0
    capsys.readouterr()
    assert cli(w, "-q", cache=cache) == 0
    assert "out of date" not in capsys.readouterr().err

    f = w / "models/b/model.safetensors"
    tensors = load_file(str(f))
    tensors["model.norm.weight"] = tensors["model.norm.weight"] + 1
    save_file(tensors, str(f), metadata={"format": "pt"})
    capsys.readouterr()
    assert cli(w, "-q", cache=cache) == 1
    err = capsys.readouterr().err
    assert "Mergefile.lock is out of date: path:models/b: model.safetensors changed (tensors:" in err

    capsys.readouterr()
    assert verb(w, "lock", "--check", cache=cache) == 1
    out = capsys.readouterr().out
    assert "path:models/b: model.safetensors changed" in out and "out of date" in out

    # a model the lock has never seen
    text = (w / "Mergefile").read_text() + 'model bb = hf("org/b")\nout/y: linear { bb weight=1 ; a weight=1 }\n'
    (w / "Mergefile").write_text(text)
    capsys.readouterr()
    assert cli(w, "-n", "out/y", cache=cache) == 0
    assert "hf:org/b is not in Mergefile.lock" in capsys.readouterr().err
    assert verb(w, "lock", cache=cache) == 0
    assert verb(w, "lock", "--check", cache=cache) == 0


def test_corrupt_lock_is_a_user_error(hub, tmp_path, capsys):
    (tmp_path / "Mergefile").write_text(HUB_RECIPE)
    (tmp_path / "Mergefile.lock").write_text("{not json")
    capsys.readouterr()
    assert cli(tmp_path, "-n", cache=tmp_path / "cache") == 2
    err = capsys.readouterr().err
    assert "not a valid mergebuild lock file" in err and "Traceback" not in err


def test_push_dry_run_and_refusals(hub, tmp_path, capsys):
    cache = tmp_path / "cache"
    mf = tmp_path / "Mergefile"
    mf.write_text(HUB_RECIPE + "all: out/x\n")
    capsys.readouterr()
    assert verb(tmp_path, "push", "out/x", "me/merged", "--dry-run", cache=cache) == 2
    assert "has not been built yet" in capsys.readouterr().err
    assert cli(tmp_path, cache=cache) == 0

    capsys.readouterr()
    assert verb(tmp_path, "push", "out/x", "me/merged", "--dry-run", "--private", cache=cache) == 0
    out = capsys.readouterr().out
    for name in ("README.md", "mergebuild_config.yml", "config.json", "mergebuild.json", ".safetensors"):
        assert name in out
    assert "would upload" in out and "me/merged" in out and "(private)" in out

    capsys.readouterr()  # a real upload, offline: one paragraph, exit 2
    assert verb(tmp_path, "push", "out/x", "me/merged", cache=cache) == 2
    err = capsys.readouterr().err
    assert "upload to me/merged failed" in err and "Traceback" not in err

    mf.write_text(mf.read_text().replace("weight=0.5", "weight=0.6"))
    for args, needle in [
        (("out/x", "me/merged", "-n"), "is stale"),
        (("all", "me/merged", "-n"), "is a group"),
        (("out/x", "not a repo", "-n"), "not a Hub repository id"),
        (("out/nope", "me/merged", "-n"), "unknown target"),
    ]:
        capsys.readouterr()
        assert verb(tmp_path, "push", *args, cache=cache) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, (args, err)


def test_blob_digest_by_path_alone():
    from mergefile.io.hub import hf_blob_digest, hf_blob_sha256, snapshot_of

    sha = "a" * 64
    assert hf_blob_sha256(f"/c/hub/models--org--name/blobs/{sha}") == sha
    assert hf_blob_digest(f"/c/hub/models--org--name/blobs/{'b' * 40}") == "git-sha1:" + "b" * 40
    assert hf_blob_sha256(f"/c/models/blobs/{sha}") is None  # not a repo folder
    assert hf_blob_sha256(f"/c/hub/models--org--name/snapshots/{sha}") is None
    assert snapshot_of(f"/c/hub/models--org--name/snapshots/{'c' * 40}") == ("org/name", "c" * 40)
    assert snapshot_of("/c/models/a") is None
