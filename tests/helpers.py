"""Helpers for end-to-end tests: write a Mergefile next to tiny models, run the CLI, read outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open

from mergefile.cli.main import main

REPO = Path(__file__).resolve().parents[1]


def mergefile_for(dir: Path, models: dict[str, Path], body: str) -> Path:
    """A Mergefile in ``dir`` declaring ``models`` by absolute path, then ``body``."""
    decls = "\n".join(f'model {name} = "{path}"' for name, path in models.items())
    path = dir / "Mergefile"
    path.write_text(decls + "\n\n" + body.strip() + "\n")
    return path


def cli(dir: Path, *args: str, cache: Path | None = None) -> int:
    """Run ``mergebuild`` in-process in ``dir`` (tests share torch's import).

    The working directory is restored afterwards: ``-C`` changes it as a console command does,
    and a test that then deletes ``dir`` would leave the process in a removed folder, where
    numba, compiling a kernel at its first call in a later test, fails on ``os.getcwd()``.
    """
    argv = ["-C", str(dir), "--quiet"]
    if cache is not None:
        argv += ["--cache-dir", str(cache)]
    cwd = os.getcwd()
    try:
        return main(argv + list(args))
    finally:
        os.chdir(cwd)


def cli_json(dir: Path, *args: str, cache: Path | None = None, capsys=None) -> dict:
    capsys.readouterr()
    code = cli(dir, "--json", *args, cache=cache)
    out = capsys.readouterr().out
    data = json.loads(out)
    data["exit"] = code
    return data


def run_subprocess(dir: Path, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mergefile.cli.main", "-C", str(dir), "--quiet", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def read_tensors(out_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of an output folder, by name (clones, so files can change later)."""
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(Path(out_dir).glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            for k in fh.keys():
                tensors[k] = fh.get_tensor(k).clone()
    return tensors


def read_model(path: Path) -> dict[str, torch.Tensor]:
    return read_tensors(path)


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


def shard_bytes(out_dir: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(Path(out_dir).glob("*.safetensors"))}


def age_files(*dirs: Path, seconds: float = 60) -> None:
    """Make files look old, so the stat-cache's racy-clean rule trusts them at once."""
    import os
    import time

    t = time.time() - seconds
    for d in dirs:
        for f in Path(d).iterdir():
            if f.is_file():
                os.utime(f, (t, t))
