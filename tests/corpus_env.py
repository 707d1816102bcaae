"""A world for the public mergekit config corpus (``tests/data/mergekit_corpus``): tiny models.

Every model a config names gets a tiny random Llama (hidden 8, vocab 64) with the layer count
its configs need (the largest ``layer_range`` end among the configs that use it together, at
least 4): hub ids in a Hugging Face cache laid out as ``huggingface_hub`` reads it offline
(``models--org--name/{blobs,snapshots,refs}``), other strings as folders under the work
directory (``D:/Uni/...`` is a relative path on Linux), as mergekit resolves them. Seeds come
from the model's name, so the world is the same on every machine.

Only torch, safetensors and PyYAML are needed, so ``bench/mergekit_corpus.py`` reuses the
model list from mergekit's own virtualenv; the world itself is built with the project's
(``make_tokenizer``). ``python -m tests.corpus_env DIR`` builds it in DIR.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import yaml

CORPUS = Path(__file__).parent / "data" / "mergekit_corpus"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
HIDDEN, INTER, HEADS, KV, VOCAB = 8, 16, 2, 1, 64


def configs() -> list[Path]:
    return sorted(CORPUS.glob("*.yml"))


def _refs_of(doc: dict) -> tuple[list[str], int]:
    """Model strings of one document (without ``@rev``/``+lora``) and its largest layer end."""
    out: list[str] = []
    end = 0

    def add(m) -> None:
        while isinstance(m, dict):
            m = m.get("model", m.get("path"))
        if isinstance(m, str):
            out.append(m.split("+")[0].split("@")[0])

    add(doc.get("base_model"))
    for m in doc.get("models") or []:
        add(m.get("model") if isinstance(m, dict) else m)
    for s in doc.get("slices") or []:
        if isinstance(s.get("base_model"), str):
            add(s["base_model"])
        for src in s.get("sources") or []:
            add(src.get("model"))
            rng = src.get("layer_range")
            if isinstance(rng, list) and len(rng) == 2 and isinstance(rng[1], int):
                end = max(end, rng[1])
    for e in (doc.get("experts") or []) + (doc.get("shared_experts") or []):
        add(e.get("source_model"))
    if doc.get("tokenizer_source") not in (None, "union", "base"):
        add(doc["tokenizer_source"])
    return out, end


def model_layers() -> dict[str, int]:
    """Each model string -> its layer count (models used together get the same count)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    need: dict[str, int] = {}
    for path in configs():
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if isinstance(d, dict)]
        stages = {d["name"] for d in docs if isinstance(d.get("name"), str)}
        for d in docs:
            refs, end = _refs_of(d)
            refs = [r for r in refs if r not in stages]
            for r in refs:
                find(r)
                need[r] = max(need.get(r, 4), end)
            for r in refs[1:]:
                parent[find(r)] = find(refs[0])
    top: dict[str, int] = {}
    for r, n in need.items():
        top[find(r)] = max(top.get(find(r), 4), n)
    return {r: top[find(r)] for r in need}


def _seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def _tensors(name: str, layers: int):
    import torch

    g = torch.Generator().manual_seed(_seed(name))
    hd = HIDDEN // HEADS

    def w(*shape):
        return (torch.randn(*shape, generator=g) * 0.2).to(torch.bfloat16)

    def norm():
        return (1 + 0.1 * torch.randn(HIDDEN, generator=g)).to(torch.bfloat16)

    t = {"model.embed_tokens.weight": w(VOCAB, HIDDEN), "model.norm.weight": norm(), "lm_head.weight": w(VOCAB, HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t |= {
            p + "self_attn.q_proj.weight": w(HEADS * hd, HIDDEN),
            p + "self_attn.k_proj.weight": w(KV * hd, HIDDEN),
            p + "self_attn.v_proj.weight": w(KV * hd, HIDDEN),
            p + "self_attn.o_proj.weight": w(HIDDEN, HEADS * hd),
            p + "mlp.gate_proj.weight": w(INTER, HIDDEN),
            p + "mlp.up_proj.weight": w(INTER, HIDDEN),
            p + "mlp.down_proj.weight": w(HIDDEN, INTER),
            p + "input_layernorm.weight": norm(),
            p + "post_attention_layernorm.weight": norm(),
        }
    return t


def _config(layers: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV,
        "num_hidden_layers": layers,
        "vocab_size": VOCAB,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 3,
    }


def _write_model(folder: Path, name: str, layers: int, tokenizer: Path) -> None:
    import shutil

    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(_tensors(name, layers), str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(_config(layers), indent=1))
    for f in tokenizer.iterdir():
        shutil.copy(f, folder / f.name)


def _to_hub_cache(cache: Path, repo: str, staged: Path) -> None:
    """Move a staged folder into ``cache`` as the hub snapshot of ``repo`` (blobs by sha256)."""
    root = cache / ("models--" + repo.replace("/", "--"))
    commit = hashlib.sha1(repo.encode()).hexdigest()
    snap = root / "snapshots" / commit
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    for f in sorted(staged.iterdir()):
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        blob = root / "blobs" / digest
        if not blob.exists():
            os.replace(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)


def build_world(work: Path) -> Path:
    """Models for every config: ``work/<local path>`` and ``work/hf-cache`` (returned)."""
    from mergefile.demo import make_tokenizer

    tok = work / ".tokenizer"
    make_tokenizer(tok, VOCAB)
    cache = work / "hf-cache"
    for name, layers in sorted(model_layers().items()):
        if HUB_ID.match(name):
            staged = work / ".staging" / name
            _write_model(staged, name, layers, tok)
            _to_hub_cache(cache, name, staged)
        else:
            _write_model(work / name, name, layers, tok)
    return cache


if __name__ == "__main__":
    print(build_world(Path(sys.argv[1]).resolve()))


def offline_world(tmp_path_factory, name: str):
    """A fresh world under a temporary folder, with the Hub offline and its cache as the Hugging
    Face cache while the caller's tests run (a generator for a module-scoped fixture)."""
    root = tmp_path_factory.mktemp(name)
    cache = build_world(root)
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_HUB_CACHE")}
    os.environ.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache))
    try:
        yield root
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
