"""Record mergekit's outputs for the public config corpus (tests/data/mergekit_corpus).

Run with mergekit's throwaway virtualenv, in a world built by ``tests/corpus_env.py``:

    .venv/bin/python -m tests.corpus_env /tmp/world
    bench/.venv-mergekit/bin/python bench/mergekit_corpus.py /tmp/world [extra]

Each config runs through mergekit's own command (``mergekit-yaml``, ``mergekit-moe`` or
``mergekit-multimerge``, by what the file is) in the world's folder, as a user runs it, with
``HF_HUB_OFFLINE=1`` and the world's Hugging Face cache. mergekit 0.1.5 calls
``huggingface_hub.list_repo_files`` before ``snapshot_download``: a network call even offline.
This process alone stands that one function in with a listing of the cached snapshot; mergekit's
files are not touched. Outputs go to ``tests/data/mergekit_corpus/reference/``: ``status.json``
(built, or mergekit's error) and ``tensors.safetensors`` (``CONFIG::TENSOR`` keys, mergekit's
dtype), a few MB for the whole corpus, so CI compares without mergekit. ``extra`` runs the
test-only configs of ``tests/data/mergekit_extra`` (e.g. a float32 arcee_fusion merge) into
``extra-status.json`` / ``extra-tensors.safetensors`` instead.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "data" / "mergekit_corpus"
EXTRA = REPO / "tests" / "data" / "mergekit_extra"


def _offline_listing(cache: Path):
    """``list_repo_files`` answered from the cached snapshot (what mergekit asks it for)."""

    def list_repo_files(repo_id, *args, revision=None, **kwargs):
        root = cache / ("models--" + repo_id.replace("/", "--"))
        ref = root / "refs" / (revision or "main")
        commit = ref.read_text().strip() if ref.is_file() else (revision or "")
        snap = root / "snapshots" / commit
        if not snap.is_dir():
            raise FileNotFoundError(f"{repo_id} is not in the local cache")
        return sorted(p.name for p in snap.iterdir())

    return list_repo_files


def _kind(text: str) -> str:
    import yaml

    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    if len(docs) > 1:
        return "multi"
    return "moe" if isinstance(docs[0], dict) and "experts" in docs[0] else "yaml"


def _run(kind: str, config: Path, out: Path, scratch: Path) -> None:
    if kind == "moe":
        from mergekit.scripts.moe import main

        args = [str(config), str(out)]
    elif kind == "multi":
        from mergekit.scripts.multimerge import main

        args = [str(config), "--out-path", str(out), "-I", str(scratch / "intermediate")]
    else:
        from mergekit.scripts.run_yaml import main

        args = [str(config), str(out)]
    # no model card: mergekit's card asks the hub whether each model name is a repo (a network call)
    main.main(args=args + ["--random-seed", "0", "--no-write-model-card"], standalone_mode=False)


def _tensors(out: Path) -> dict:
    from safetensors.torch import load_file

    t = {}
    for f in sorted(out.glob("*.safetensors")):
        t.update(load_file(str(f)))
    return t


def main(world: Path, which: str = "corpus") -> int:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_CACHE"] = str(world / "hf-cache")
    import huggingface_hub
    from safetensors.torch import save_file

    huggingface_hub.list_repo_files = _offline_listing(world / "hf-cache")
    os.chdir(world)  # mergekit reads relative model paths from here
    status, tensors = {}, {}
    for config in sorted((EXTRA if which == "extra" else CORPUS).glob("*.yml")):
        name = config.stem
        out, scratch = world / "mergekit-out" / name, world / "mergekit-scratch" / name
        kind = _kind(config.read_text(encoding="utf-8"))
        try:
            _run(kind, config, out, scratch)
            got = _tensors(out)
            if not got:
                raise RuntimeError("no tensors written")
            tensors.update({f"{name}::{k}": v.contiguous() for k, v in got.items()})
            status[name] = {"kind": kind, "built": True, "tensors": len(got)}
        except BaseException as e:  # noqa: BLE001 - any failure of mergekit is the record
            if isinstance(e, KeyboardInterrupt):
                raise
            last = traceback.format_exception_only(type(e), e)[-1].strip()
            status[name] = {"kind": kind, "built": False, "error": last[:300]}
        print(name, "built" if status[name]["built"] else "FAILED: " + status[name]["error"][:120], flush=True)
    ref = CORPUS / "reference"
    ref.mkdir(exist_ok=True)
    prefix = "extra-" if which == "extra" else ""
    (ref / f"{prefix}status.json").write_text(json.dumps(status, indent=1, sort_keys=True) + "\n")
    save_file(tensors, str(ref / f"{prefix}tensors.safetensors"))
    built = sum(s["built"] for s in status.values())
    print(f"mergekit built {built} of {len(status)} configs")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]).resolve(), *sys.argv[2:3]))
