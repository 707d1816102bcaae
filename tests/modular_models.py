"""Tiny seeded multi-module models built locally: Llava (Llama text decoder, CLIP or SigLIP
vision tower, projector) and T5 (encoder, decoder, shared embedding). A few hundred KB each.

A "fine-tune" is its base plus seeded noise on every tensor, so merges of a base and its
fine-tunes give results that differ per tensor and per model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mergefile.demo import make_tokenizer

VOCAB = 128
IMAGE_TOKEN = 127
TEXT_LAYERS, VISION_LAYERS = 3, 2
PREPROCESSOR = {
    "image_processor_type": "CLIPImageProcessor",
    "crop_size": {"height": 16, "width": 16},
    "size": {"shortest_edge": 16},
    "do_normalize": True,
}


def llava_config(vision: str = "clip_vision_model"):
    from transformers import LlavaConfig

    text = dict(
        model_type="llama",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=64,
    )
    vis = dict(
        model_type=vision,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=VISION_LAYERS,
        num_attention_heads=2,
        image_size=16,
        patch_size=8,
    )
    return LlavaConfig(
        text_config=text,
        vision_config=vis,
        image_token_index=IMAGE_TOKEN,
        vision_feature_layer=-1,
        image_seq_length=4,
        projector_hidden_act="gelu",
    )


def t5_config():
    from transformers import T5Config

    return T5Config(
        vocab_size=VOCAB,
        d_model=16,
        d_kv=4,
        d_ff=32,
        num_layers=2,
        num_decoder_layers=3,
        num_heads=2,
        feed_forward_proj="gated-gelu",
        decoder_start_token_id=0,
    )


def _save(model, out: Path, seed: int) -> Path:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    make_tokenizer(out, VOCAB)
    return out


def _random(cls, config, out: Path, seed: int) -> Path:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    return _save(model, out, seed)


def finetune(base: Path, out: Path, seed: int, scale: float = 0.02) -> Path:
    """``base`` plus ``scale * N(0, 1)`` on every tensor (seeded), same config and files."""
    out.mkdir(parents=True, exist_ok=True)
    for f in base.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copyfile(f, out / f.name)
    g = torch.Generator().manual_seed(seed)
    for f in sorted(base.glob("*.safetensors")):
        tensors = load_file(str(f))
        noisy = {
            k: (v.float() + scale * torch.randn(v.shape, generator=g)).to(v.dtype) for k, v in sorted(tensors.items())
        }
        save_file(noisy, str(out / f.name), metadata={"format": "pt"})
    return out


def make_llava(out: Path, seed: int, base: Path | None = None, vision: str = "clip_vision_model") -> Path:
    """A tiny Llava (3 text layers, 2 vision layers) with a tokenizer and a preprocessor config."""
    if base is not None:
        return finetune(base, out, seed)
    from transformers import LlavaForConditionalGeneration

    path = _random(LlavaForConditionalGeneration, llava_config(vision), out, seed)
    (path / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2) + "\n")
    return path


def make_t5(out: Path, seed: int, base: Path | None = None) -> Path:
    """A tiny T5 (2 encoder blocks, 3 decoder blocks, tied shared embedding)."""
    if base is not None:
        return finetune(base, out, seed)
    from transformers import T5ForConditionalGeneration

    return _random(T5ForConditionalGeneration, t5_config(), out, seed)


def make_family(root: Path, make, names: tuple[str, ...] = ("a", "b")) -> dict[str, Path]:
    """``{"base": ..., "a": ..., "b": ...}``: a random base and seeded fine-tunes of it."""
    base = make(root / "base", 0)
    return {"base": base, **{n: make(root / n, i, base) for i, n in enumerate(names, start=1)}}
