"""Builds that take the torch-free path (``run/compute_bits.py``) never import torch and give
the bits of the torch steps.

A weight edit of a TIES or DARE recipe (every stage mask cached) and a task_arithmetic build
(no stage) run in a process of their own, which reports whether torch was imported; the outputs
must equal clean builds, which compute with torch. A build the path cannot take (a cold TIES
build selects with torch) still imports it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mergefile.methods import _gta_kernels
from tests.helpers import REPO, assert_same_tensors, cli, mergefile_for, read_tensors

pytestmark = pytest.mark.skipif(_gta_kernels._numba() is None, reason="numba not installed")

# Builds in a fresh interpreter, which prints whether it imported torch and the build's counts.
_BUILD = (
    "import json, sys\n"
    "from mergefile.cli.main import main\n"
    "code = main(sys.argv[1:])\n"
    "print(json.dumps({'exit': code, 'torch': 'torch' in sys.modules}))\n"
)


def _build_apart(dir: Path, cache: Path, **env_vars: str) -> dict:
    env = {**os.environ, "MERGEBUILD_SERVER": "off", "PYTHONPATH": str(REPO), **env_vars}
    argv = ["-C", str(dir), "--quiet", "--cache-dir", str(cache), "-j", "2", "out/x"]
    r = subprocess.run([sys.executable, "-c", _BUILD, *argv], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


RECIPES = {
    "ties": "ties(base=base) {{ a weight={wa} density=0.5 ; b weight={wb} density=0.4 }}",
    "dare_ties": "dare_ties(base=base) {{ a weight={wa} density=0.5 ; b weight={wb} density=0.4 }}",
    "della": "della(base=base) {{ a weight={wa} density=0.5 epsilon=0.1 ; b weight={wb} density=0.4 }}",
    "task_arithmetic": "task_arithmetic(base=base, lambda=0.9) {{ a weight={wa} ; b weight={wb} }}",
}


@pytest.fixture
def aged_models(tiny_models_bf16, tmp_path) -> dict[str, Path]:
    """Copies of the bf16 family written an hour ago: the stat-cache re-hashes files modified
    within its racy window, and a build that hashes inputs takes them for changed ones (whose
    selections torch must make). Real checkpoints are older than a build."""
    old = time.time() - 3600
    out = {}
    for name, src in tiny_models_bf16.items():
        dst = shutil.copytree(src, tmp_path / "models" / name)
        for f in Path(dst).iterdir():
            os.utime(f, (old, old))
        out[name] = Path(dst)
    return out


def _write(dir: Path, models, method: str, wa: float, wb: float) -> None:
    mergefile_for(dir, models, "out/x: " + RECIPES[method].format(wa=wa, wb=wb))


def _clean(tmp_path: Path, models, method: str, wa: float, wb: float) -> dict:
    clean = tmp_path / "clean"
    clean.mkdir()
    _write(clean, models, method, wa, wb)
    assert cli(clean, "out/x", cache=tmp_path / "clean-cache") == 0
    return read_tensors(clean / "out" / "x")


@pytest.mark.parametrize("method", ["ties", "dare_ties", "della"])
def test_a_weight_edit_from_cached_masks_imports_no_torch(method, aged_models, tmp_path):
    work, cache = tmp_path / "w", tmp_path / "cache"
    work.mkdir()
    _write(work, aged_models, method, 0.7, 0.5)
    assert _build_apart(work, cache)["torch"]  # the cold build selects with torch
    _write(work, aged_models, method, 0.2, 0.9)
    edit = _build_apart(work, cache)
    assert edit == {"exit": 0, "torch": False}
    assert_same_tensors(read_tensors(work / "out" / "x"), _clean(tmp_path, aged_models, method, 0.2, 0.9))


@pytest.mark.parametrize("read_once", ["never", "always"])
def test_a_task_arithmetic_build_imports_no_torch(read_once, tiny_models_bf16, tmp_path):
    """Hashed up front, or keyed job by job as the merge reads the inputs (deferred keys)."""
    work = tmp_path / "w"
    work.mkdir()
    _write(work, tiny_models_bf16, "task_arithmetic", 0.6, -0.3)
    got = _build_apart(work, tmp_path / "cache", MERGEBUILD_READ_ONCE=read_once)
    assert got == {"exit": 0, "torch": False}
    expected = _clean(tmp_path, tiny_models_bf16, "task_arithmetic", 0.6, -0.3)
    assert_same_tensors(read_tensors(work / "out" / "x"), expected)


def test_float32_inputs_take_the_torch_steps(tiny_models, tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    _write(work, tiny_models, "task_arithmetic", 0.6, -0.3)
    assert _build_apart(work, tmp_path / "cache") == {"exit": 0, "torch": True}
