"""Differential check of mergebuild against mergekit 0.1.5 on tiny bf16 models.

Builds a tiny seeded bf16 Llama family (``mergefile.demo.make_llama``: a base and three
fine-tunes), merges each recipe below with ``mergekit-yaml`` (from the throwaway virtualenv
``bench/.venv-mergekit``, never the project's) and with ``mergebuild --config``, and counts per
recipe the entries that differ, and by how many ulp. With ``--record DIR`` it also writes
mergekit's outputs there (one safetensors file per recipe, plus the input digests), which
``tests/methods/test_vs_mergekit.py`` compares against without needing mergekit.

    .venv/bin/python bench/mergekit_diff.py [--record tests/data/mergekit_ref]
"""

from __future__ import annotations

import argparse
import hashlib
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent
MERGEKIT = ROOT / ".venv-mergekit" / "bin" / "mergekit-yaml"

# recipe name -> (merge_method, per-model parameters, global parameters, models used)
# Random sparsifiers (DARE, DELLA) draw from mergekit's global RNG, so only their density-1
# combine (rescale, sign election, normalize) can be compared entry for entry.
RECIPES: dict[str, tuple[str, dict, dict, tuple[str, ...]]] = {
    "linear": ("linear", {"weight": [0.3, 0.5, 0.2]}, {}, ("a", "b", "c")),
    "task_arithmetic": ("task_arithmetic", {"weight": [0.3, 0.5, 0.7]}, {}, ("a", "b", "c")),
    "ties": ("ties", {"weight": [0.3, 0.5, 0.7], "density": [0.5, 0.3, 0.7]}, {}, ("a", "b", "c")),
    "dare_ties_d1": ("dare_ties", {"weight": [0.3, 0.5, 0.7]}, {}, ("a", "b", "c")),
    "breadcrumbs_ties": (
        "breadcrumbs_ties",
        {"weight": [0.3, 0.5, 0.7], "density": [0.5, 0.5, 0.5], "gamma": [0.05, 0.05, 0.05]},
        {},
        ("a", "b", "c"),
    ),
    "model_stock": ("model_stock", {}, {}, ("a", "b", "c")),
    "slerp": ("slerp", {}, {"t": 0.3}, ("a",)),
    "nearswap": ("nearswap", {}, {"t": 0.01}, ("a",)),
    "sce": ("sce", {}, {"select_topk": 0.5}, ("a", "b", "c")),
}


def make_family(root: Path) -> dict[str, Path]:
    """The tiny bf16 family, the same bytes on every machine (seeded).

    ``a`` fine-tunes the base; ``b`` and ``c`` fine-tune ``a``, so task vectors share a
    direction as real fine-tunes do (model_stock's cosines are then positive, where mergekit and
    mergebuild agree; for negative ones mergebuild deliberately clamps, docs/methods.md).
    """
    from mergefile.demo import make_llama

    base = make_llama(root / "base", seed=0, dtype=torch.bfloat16)
    a = make_llama(root / "a", seed=1, base=base)
    return {
        "base": base,
        "a": a,
        "b": make_llama(root / "b", seed=2, base=a),
        "c": make_llama(root / "c", seed=3, base=a),
    }


def family_digest(models: dict[str, Path]) -> str:
    """sha256 over every input tensor file, to tell a recording from other inputs."""
    h = hashlib.sha256()
    for name in sorted(models):
        for f in sorted(models[name].glob("*.safetensors")):
            h.update(name.encode() + f.name.encode() + f.read_bytes())
    return h.hexdigest()


def config_yaml(recipe: str, models: dict[str, Path]) -> str:
    """A mergekit YAML for ``recipe`` (absolute paths, dtype bfloat16)."""
    method, per_model, params, used = RECIPES[recipe]
    lines = [f"merge_method: {method}", f"base_model: {models['base']}", "dtype: bfloat16", "models:"]
    if method != "linear":
        lines.append(f"  - model: {models['base']}")
    for i, name in enumerate(used):
        lines.append(f"  - model: {models[name]}")
        if per_model:
            lines.append("    parameters:")
            lines += [f"      {k}: {v[i]}" for k, v in per_model.items()]
    if method == "linear":
        lines = [ln for ln in lines if not ln.startswith("base_model")]
    if params:
        lines.append("parameters:")
        lines += [f"  {k}: {v}" for k, v in params.items()]
    return "\n".join(lines) + "\n"


def read_dir(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def run_mergekit(cfg: Path, out: Path) -> None:
    subprocess.run(
        [str(MERGEKIT), str(cfg), str(out), "--no-copy-tokenizer"], check=True, capture_output=True, text=True
    )


def run_mergebuild(cfg: Path, out: Path, cache: Path) -> None:
    exe = Path(sys.executable).parent / "mergebuild"
    subprocess.run(
        [str(exe), "--config", str(cfg), str(out), "--cache-dir", str(cache)],
        check=True,
        capture_output=True,
        text=True,
        cwd=out.parent,
    )


def ulp_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| in units of the last place of ``b`` (its dtype's spacing at |b|)."""
    a64, b64 = a.double(), b.double()
    _, exp = torch.frexp(b64)
    bits = 1 - round(math.log2(torch.finfo(b.dtype).eps))  # mantissa bits incl. the implicit one
    tiny = torch.finfo(b.dtype).tiny
    spacing = torch.ldexp(torch.ones_like(b64), exp - bits).clamp(min=tiny * 2.0 ** -(bits - 1))
    return ((a64 - b64).abs() / spacing).ceil().to(torch.int64)


def _straddling(v: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Positions whose value is tied with others across a cut at rank ``lo`` or ``hi`` of an
    ascending order of flat ``v``: there any sort may keep either one of the tied entries."""
    srt = torch.sort(v).values
    out = torch.zeros_like(v, dtype=torch.bool)
    for r in (lo, hi):
        if 0 < r < v.numel() and srt[r - 1] == srt[r]:
            out |= v == srt[r]
    return out


def tie_positions(recipe: str, inputs: list[torch.Tensor]) -> torch.Tensor | None:
    """Where a selection cut of ``recipe`` falls inside a group of equal values (any model)."""
    method, per_model, params, used = RECIPES[recipe]
    base, xs = inputs[0], inputs[1:]
    deltas = [x - base for x in xs]
    n = base.numel()
    out = torch.zeros(n, dtype=torch.bool)
    if method in ("ties", "breadcrumbs_ties"):
        for i, d in enumerate(deltas):
            k = max(1, int(per_model["density"][i] * n))
            if method == "ties":
                lo, hi = n - k, n
            else:
                top = int(per_model["gamma"][i] * n)
                lo = max(0, n - k - top)
                hi = lo + k
            out |= _straddling(d.abs().float().reshape(-1), lo, hi)
    elif method == "sce":
        var = torch.var(torch.stack(deltas), dim=0, unbiased=False).reshape(-1)
        k = int(int(torch.count_nonzero(var)) * params["select_topk"])
        out |= _straddling(var.float(), n - k, n)
    else:
        return None
    return out.view(base.shape)


def compare(
    mine: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], recipe: str, inputs: list[dict[str, torch.Tensor]]
) -> dict[str, int]:
    """Counts over all tensors: entries, differing entries (and of them those at a cut inside a
    group of exact ties), tensors differing, max ulp."""
    stats = {
        "tensors": 0,
        "entries": 0,
        "differing": 0,
        "at_tied_cut": 0,
        "tensors_differing": 0,
        "of_them_no_tied_cut": 0,
        "max_ulp": 0,
    }
    for name, r in ref.items():
        m = mine[name]
        stats["tensors"] += 1
        stats["entries"] += r.numel()
        diff = m != r
        n = int(diff.sum())
        if n:
            stats["differing"] += n
            stats["tensors_differing"] += 1
            stats["max_ulp"] = max(stats["max_ulp"], int(ulp_diff(m, r).max()))
            ties = tie_positions(recipe, [t[name] for t in inputs])
            if ties is not None:
                stats["at_tied_cut"] += int((diff & ties).sum())
            if ties is None or not bool(ties.any()):
                stats["of_them_no_tied_cut"] += 1
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", type=Path, help="write mergekit's outputs here")
    ap.add_argument("--only", nargs="*", help="recipes to run (default: all)")
    args = ap.parse_args()
    if not MERGEKIT.exists():
        sys.exit(f"{MERGEKIT} is missing: create bench/.venv-mergekit with mergekit 0.1.5 first")
    with tempfile.TemporaryDirectory(prefix="mk-diff-") as tmp:
        root = Path(tmp)
        models = make_family(root / "models")
        digest = family_digest(models)
        if args.record:
            args.record.mkdir(parents=True, exist_ok=True)
        for recipe in args.only or RECIPES:
            cfg = root / f"{recipe}.yml"
            cfg.write_text(config_yaml(recipe, models))
            run_mergekit(cfg, root / f"mk-{recipe}")
            run_mergebuild(cfg, root / f"mb-{recipe}", root / "cache")
            ref = read_dir(root / f"mk-{recipe}")
            inputs = [read_dir(models[m]) for m in ("base", *RECIPES[recipe][3])]
            stats = compare(read_dir(root / f"mb-{recipe}"), ref, recipe, inputs)
            print(f"{recipe:18s} " + " ".join(f"{k}={v}" for k, v in stats.items()), flush=True)
            if args.record:
                save_file(ref, str(args.record / f"{recipe}.safetensors"), metadata={"inputs_sha256": digest})
        if args.record:
            (args.record / "SOURCE.md").write_text(
                "Outputs of mergekit 0.1.5 (torch 2.13.0+cpu) for the recipes of bench/mergekit_diff.py,\n"
                "recorded with `.venv/bin/python bench/mergekit_diff.py --record tests/data/mergekit_ref`.\n"
                f"Inputs: mergefile.demo.make_llama bf16 family, sha256 {digest}.\n"
            )


if __name__ == "__main__":
    main()
