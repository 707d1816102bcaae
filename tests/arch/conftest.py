"""Tiny random models of every architecture family, generated from transformers config classes.

One line per family in FAMILY_CONFIGS (adding a family = one entry in
``mergefile/arch/families.json`` + one line here). Models are built on first use and kept for
the session: two random inits ("a", "b") per family, hidden 32, 2 layers, vocabulary 64, with
the demo tokenizer.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

VOCAB = 64
_COMMON = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    vocab_size=VOCAB,
    max_position_embeddings=64,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=3,
)
_SLIDING = ["sliding_attention", "full_attention"]
_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, mlp_only_layers=[1])

# family name (families.json) -> config overrides for its tiny test model
FAMILY_CONFIGS: dict[str, dict] = {
    "llama": {},
    "mistral": {},
    "mixtral": dict(num_local_experts=2, num_experts_per_tok=1),
    "qwen2": {},
    "qwen3": dict(head_dim=8),
    "qwen2_moe": dict(_MOE, shared_expert_intermediate_size=32),
    "qwen3_moe": dict(_MOE, head_dim=8),
    "gemma": dict(head_dim=8),
    "gemma2": dict(head_dim=8, layer_types=_SLIDING, sliding_window=16),
    "gemma3_text": dict(head_dim=8, layer_types=_SLIDING, sliding_window=16),
    "phi3": {},
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=VOCAB, bos_token_id=1, eos_token_id=2),
    "gpt_neox": {},
    "stablelm": {},
    "olmo2": {},
    "granite": {},
    "cohere": {},
}


def _config(family: str):
    from transformers import AutoConfig

    from mergefile.arch import families

    overrides = FAMILY_CONFIGS[family]
    kwargs = overrides if family == "gpt2" else {**_COMMON, **overrides}
    return AutoConfig.for_model(families()[family].model_types[0], **kwargs)


def _make(out: Path, family: str, seed: int, tokenizer: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(_config(family))
    hf_logging.disable_progress_bar()
    model.save_pretrained(out, safe_serialization=True)
    for f in tokenizer.iterdir():
        shutil.copyfile(f, out / f.name)
    return out


@pytest.fixture(scope="session")
def family_models(tmp_path_factory: pytest.TempPathFactory):
    """``family_models(name) -> {"a": path, "b": path}``: built on first request, then reused."""
    from mergefile.demo import make_tokenizer

    root = tmp_path_factory.mktemp("families")
    tokenizer = root / "_tokenizer"
    make_tokenizer(tokenizer, VOCAB)
    made: dict[str, dict[str, Path]] = {}

    def get(family: str) -> dict[str, Path]:
        if family not in made:
            made[family] = {
                name: _make(root / family / name, family, seed, tokenizer) for name, seed in (("a", 0), ("b", 1))
            }
        return made[family]

    return get
