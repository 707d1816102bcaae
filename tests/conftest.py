"""Session fixtures shared by all tests: tiny seeded Llama models built locally (no hub).

Built once per session (the base through transformers, fine-tunes as base + seeded noise), a few
hundred KB each; most of the cost is importing transformers.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mergefile.demo import make_llama


def _family(root: Path, dtype: torch.dtype, names: tuple[str, ...]) -> dict[str, Path]:
    """A base (seed 0) and fine-tunes of it (seeds 1, 2, ...)."""
    base = make_llama(root / "base", seed=0, dtype=dtype)
    models = {"base": base}
    for seed, name in enumerate(names, start=1):
        models[name] = make_llama(root / name, seed=seed, base=base)
    return models


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Paths of "base", "a", "b", "c": a float32 Llama (hidden 32, 4 layers, vocab 128) and 3 fine-tunes."""
    return _family(tmp_path_factory.mktemp("tiny_models"), torch.float32, ("a", "b", "c"))


@pytest.fixture(scope="session")
def tiny_models_bf16(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Paths of "base", "a", "b": the same family in bfloat16."""
    return _family(tmp_path_factory.mktemp("tiny_models_bf16"), torch.bfloat16, ("a", "b"))


@pytest.fixture(scope="session", autouse=True)
def _private_user_cache(tmp_path_factory: pytest.TempPathFactory):
    """Per-user caches (aliases of repeated commands, ``cli/noop.py``; lark's grammar cache) go
    to a folder of this session, not the user's ``~/.cache``."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old
