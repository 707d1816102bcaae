"""Tiny model families for target-kind tests: a tied-embedding Llama, Qwen2 and Qwen3 dense models.

Each family is a base (random init through its transformers config class, saved with a tokenizer)
and fine-tunes of it (base + seeded noise, same files), 2 layers, hidden 32.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mergefile.demo import make_llama, make_tokenizer


def make_dense(out: Path, family: str, seed: int = 0) -> Path:
    """A random tiny dense model of ``family`` (qwen2 | qwen3), saved like the hub would."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM
    from transformers.utils import logging as hf_logging

    cfg_cls, model_cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM)}[family]
    config = cfg_cls(
        hidden_size=32,
        num_hidden_layers=2,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
        with torch.no_grad():  # q/k/v biases start at zero: make them count
            for name, p in model.named_parameters():
                if name.endswith(".bias"):
                    p.normal_(0, 0.05)
    hf_logging.disable_progress_bar()
    model.save_pretrained(os.fspath(out))
    make_tokenizer(out, 128)
    return out


def _family(root: Path, family: str, names: tuple[str, ...]) -> dict[str, Path]:
    base = make_dense(root / "base", family)
    out = {"base": base}
    for seed, name in enumerate(names, start=1):
        out[name] = make_llama(root / name, seed=seed, base=base)
    return out


@pytest.fixture(scope="session")
def tied_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A Llama with tied embeddings (no lm_head tensor) and a fine-tune of it."""
    root = tmp_path_factory.mktemp("tied_models")
    base = make_llama(root / "base", seed=0, layers=2, tie_embeddings=True)
    return {"base": base, "ft": make_llama(root / "ft", seed=1, base=base)}


@pytest.fixture(scope="session")
def qwen2_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Qwen2 dense (q/k/v biases): base and fine-tunes a, b, c."""
    return _family(tmp_path_factory.mktemp("qwen2_models"), "qwen2", ("a", "b", "c"))


@pytest.fixture(scope="session")
def qwen3_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Qwen3 dense (q/k norms): base and fine-tunes a, b."""
    return _family(tmp_path_factory.mktemp("qwen3_models"), "qwen3", ("a", "b"))


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray with 2 CPUs per test module (evolve searches); workers inherit the offline switches."""
    pytest.importorskip("lm_eval")
    pytest.importorskip("cma")
    ray = pytest.importorskip("ray")
    saved = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TQDM_DISABLE")}
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    from mergefile.run.ray_executor import ray_session

    try:
        with ray_session(None, 2):
            yield ray
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
