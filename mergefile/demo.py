"""Tiny, seeded Llama models and a tokenizer, generated locally for tests, docs and recipes.

Merging needs models that share a base; downloading real ones is slow and impossible offline.
These are a few hundred KB each, byte-identical for the same seed on every run, and load in
transformers (``AutoModelForCausalLM``/``AutoTokenizer``) like any hub model.

Example:
    python -m mergefile.demo recipes/demo/models
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import string
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from mergefile.io.header import TORCH_DTYPES, read_header
from mergefile.io.hf_folder import copy_aux_files
from mergefile.io.reader import TensorReader
from mergefile.io.writer import tensor_bytes, write_safetensors

__all__ = ["make_demo", "make_llama", "make_tokenizer", "main"]

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")  # ids 0..3, as the model configs say
UNK_ID, BOS_ID, EOS_ID, PAD_ID = range(4)
_PUNCT = tuple(".,!?;:'\"()-+=*/<>[]{}#_")
_WORDS = (
    "the of and to in is it that for on with as was at by be this are from or have an not "
    "but they which you one all we can there their if has more will so no when what up out "
    "about who my some time would make like into than then its only other new two also "
    "first any after how these way may use each well work because just very see most over "
    "know back good much world year day even down long great still own old right big high "
    "small large next early young important few public same able model merge layer weight "
    "tensor math code chat solve prove def class return print add sum value number list "
    "function true false none data file hello thanks please question answer user assistant "
    "system think step result zero three four five six seven eight nine ten hundred"
).split()
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant:{% endif %}"
)
DEMO_MODELS = {"base": 0, "math": 1, "code": 2, "chat": 3}


def _vocab(size: int) -> dict[str, int]:
    """Specials, then characters and ``##``-continuations (any lowercase text encodes), then words."""
    if size < len(SPECIAL_TOKENS) + 26 + 26:
        raise ValueError(f"vocab_size {size} is too small for the demo tokenizer (minimum 56)")
    pieces = list(SPECIAL_TOKENS)
    pieces += list(string.ascii_lowercase) + ["##" + c for c in string.ascii_lowercase]
    pieces += list(string.digits) + ["##" + c for c in string.digits] + list(_PUNCT)
    pieces += [w for w in _WORDS if len(w) > 1]
    i = 0
    while len(pieces) < size:  # pad with two-letter continuations, deterministic
        a, b = divmod(i, 26)
        pieces.append("##" + string.ascii_lowercase[a % 26] + string.ascii_lowercase[b])
        i += 1
    return {p: i for i, p in enumerate(dict.fromkeys(pieces[:size]))}


def make_tokenizer(out_dir: str | Path, vocab_size: int = 128) -> None:
    """Save a tiny WordPiece fast tokenizer that ``AutoTokenizer.from_pretrained`` loads offline.

    Args:
        out_dir: folder to write ``tokenizer.json``/``tokenizer_config.json``/... into.
        vocab_size: exact vocabulary size (at least 56); ids 0-3 are <unk>, <s>, </s>, <pad>.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(_vocab(vocab_size), unk_token="<unk>", max_input_chars_per_word=32))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A </s> <s> $B", special_tokens=[("<s>", BOS_ID), ("</s>", EOS_ID)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=256,
    )
    fast.save_pretrained(os.fspath(out_dir))
    # transformers 5 names the class "TokenizersBackend", which 4.x cannot load; both know this one.
    cfg_path = Path(out_dir) / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _random_llama(out_dir: Path, seed: int, dtype: torch.dtype, **shape: int | bool) -> None:
    """Random init through transformers itself, so the folder is exactly what HF would save."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    config = LlamaConfig(
        hidden_size=shape["hidden"],
        num_hidden_layers=shape["layers"],
        intermediate_size=shape["intermediate"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        vocab_size=shape["vocab"],
        tie_word_embeddings=shape["tie_embeddings"],
        max_position_embeddings=256,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG untouched
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(dtype)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar in test output
    try:
        model.save_pretrained(os.fspath(out_dir), safe_serialization=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    make_tokenizer(out_dir, shape["vocab"])


def _finetune(out_dir: Path, base: Path, seed: int, delta_scale: float) -> None:
    """base + delta_scale * noise for every tensor, same config, same file layout as the base."""
    src = base / "model.safetensors"
    if not src.is_file():
        raise FileNotFoundError(f"{src}: make_llama(base=...) needs a single-file demo base model")
    infos, metadata = read_header(src)
    gen = torch.Generator().manual_seed(seed)
    reader = TensorReader()

    def fetch(name: str) -> memoryview:
        t = reader.get(infos[name])
        if not t.is_floating_point():
            return tensor_bytes(t)
        noise = torch.randn(t.shape, generator=gen, dtype=torch.float32)
        return tensor_bytes((t.float() + delta_scale * noise).to(t.dtype))

    # fetch() runs in entries order, so the noise stream is the same on every run.
    entries = [(n, i.dtype, i.shape, (lambda n=n: fetch(n))) for n, i in infos.items()]
    try:
        write_safetensors(out_dir / "model.safetensors", entries, metadata or None)
    finally:
        reader.close()
    shutil.copyfile(base / "config.json", out_dir / "config.json")
    copy_aux_files(base, out_dir)


def make_llama(
    out_dir: str | Path,
    *,
    seed: int,
    hidden: int = 32,
    layers: int = 4,
    intermediate: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 128,
    dtype: torch.dtype = torch.float32,
    base: str | Path | None = None,
    delta_scale: float = 0.02,
    tie_embeddings: bool = False,
) -> Path:
    """Write a tiny Llama model folder (weights, config, generation config, tokenizer).

    Args:
        out_dir: destination folder (created; existing files are overwritten).
        seed: RNG seed; the same seed (and base) gives byte-identical files.
        hidden, layers, intermediate, heads, kv_heads, vocab, dtype, tie_embeddings: the shape,
            for a random init (ignored with ``base``: a fine-tune keeps its base's config).
        base: a model made by this function; the result is its "fine-tune", every floating
            tensor ``base + delta_scale * N(0, 1)`` computed in float32.
        delta_scale: size of the fine-tune's perturbation.

    Returns:
        The folder, as a Path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if base is not None:
        _finetune(out, Path(base), seed, delta_scale)
    else:
        if dtype not in TORCH_DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype}")
        _random_llama(
            out,
            seed,
            dtype,
            hidden=hidden,
            layers=layers,
            intermediate=intermediate,
            heads=heads,
            kv_heads=kv_heads,
            vocab=vocab,
            tie_embeddings=tie_embeddings,
        )
    return out


def make_demo(root: str | Path) -> dict[str, Path]:
    """Create ``root/{base,math,code,chat}`` (a base and three fine-tunes) unless present.

    Each model is built in a temp folder and renamed, so an interrupted run leaves no half model.

    Returns:
        Name -> folder, for all four models.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    shape = dict(hidden=64, layers=4, intermediate=128, heads=4, kv_heads=2, vocab=256)
    paths: dict[str, Path] = {}
    for name, seed in DEMO_MODELS.items():
        path = root / name
        paths[name] = path
        if (path / "model.safetensors").is_file() and (path / "config.json").is_file():
            continue
        tmp = root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        if name == "base":
            make_llama(tmp, seed=seed, **shape)
        else:
            make_llama(tmp, seed=seed, base=paths["base"])
        shutil.rmtree(path, ignore_errors=True)
        os.rename(tmp, path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mergefile.demo [DIR]``: make the demo models (default recipes/demo/models)."""
    parser = argparse.ArgumentParser(prog="python -m mergefile.demo", description=main.__doc__)
    parser.add_argument("dir", nargs="?", default="recipes/demo/models", help="where to put them")
    args = parser.parse_args(argv)
    existed = {n for n in DEMO_MODELS if (Path(args.dir) / n / "model.safetensors").is_file()}
    for name, path in make_demo(args.dir).items():
        config = json.loads((path / "config.json").read_text())
        size = (path / "model.safetensors").stat().st_size
        status = "already there" if name in existed else "made"
        print(
            f"{name:5} {path}  {status}: llama, {config['num_hidden_layers']} layers, "
            f"hidden {config['hidden_size']}, {size / 1e6:.1f} MB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
