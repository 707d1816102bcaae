"""The Hugging Face cache layout, read by path alone, and uploads to the Hub.

A hub model lives in ``<cache>/models--org--name/``: ``snapshots/<commit>/<file>`` are symlinks
to ``blobs/<id>``, where ``id`` is the file's sha256 for LFS files (weights) and its git blob
sha1 for small files. The id *is* a content digest the Hub verified on download, so a tensor's
identity is ``(blob sha256, byte range)`` and nothing needs reading or hashing. Functions here
look only at path strings (no syscalls), so they are free on the no-op rebuild path.
``huggingface_hub`` is imported inside the functions that talk to the Hub.
"""

from __future__ import annotations

import os
import re
from pathlib import PurePosixPath

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_REPO_DIR = re.compile(r"^(models|datasets|spaces)--(.+)$")


def _repo_dir(name: str) -> str | None:
    m = _REPO_DIR.match(name)
    return m.group(2).replace("--", "/", 1) if m else None


def hf_blob_digest(real_path: str) -> str | None:
    """``sha256:<hex>`` (LFS) or ``git-sha1:<hex>`` for a resolved path inside an HF cache, else None.

    Args:
        real_path: a path with symlinks resolved (``os.path.realpath``), as headers record it.
    """
    p = PurePosixPath(real_path)
    if len(p.parts) < 3 or p.parent.name != "blobs" or _repo_dir(p.parent.parent.name) is None:
        return None
    if _SHA256.match(p.name):
        return f"sha256:{p.name}"
    if _SHA1.match(p.name):
        return f"git-sha1:{p.name}"
    return None


def hf_blob_sha256(real_path: str) -> str | None:
    """The sha256 of a weight file inside an HF cache, from its blob name; None elsewhere."""
    d = hf_blob_digest(real_path)
    return d[len("sha256:") :] if d and d.startswith("sha256:") else None


def snapshot_of(folder: str) -> tuple[str, str] | None:
    """(repo id, commit) of a ``.../models--org--name/snapshots/<commit>`` folder, else None."""
    p = PurePosixPath(os.path.normpath(folder))
    if len(p.parts) < 4 or p.parent.name != "snapshots" or not _SHA1.match(p.name):
        return None
    repo = _repo_dir(p.parent.parent.name)
    return None if repo is None else (repo, p.name)


def hub_cache_dir() -> str | None:
    """The cache folder the environment names *now* (``HF_HUB_CACHE``, else ``$HF_HOME/hub``).

    ``huggingface_hub`` reads these once at import; reading them per call lets a process (or a
    test) point at another cache after the library was imported. None: the library default.
    """
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return None


def upload_folder(folder: str, repo_id: str, *, private: bool, revision: str | None, message: str) -> str:
    """Create the repo if needed and upload ``folder`` as one commit; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    info = api.upload_folder(folder_path=folder, repo_id=repo_id, revision=revision, commit_message=message)
    return str(getattr(info, "commit_url", info))
