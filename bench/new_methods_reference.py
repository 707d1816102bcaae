"""Record FusionBench's outputs for the issue-19 methods on small seeded tensors.

Run in the throwaway FusionBench virtualenv (never the project's):

    python3 -m venv bench/.venv-fusionbench
    bench/.venv-fusionbench/bin/pip install torch==2.13.0
    bench/.venv-fusionbench/bin/pip install fusion-bench torch==2.13.0
    git clone https://github.com/duguodong7/pcb-merging /tmp/pcb-merging   # at 5897888
    bench/.venv-fusionbench/bin/python bench/new_methods_reference.py /tmp/pcb-merging/pcb-merging.py

It writes ``tests/data/new_methods_reference.safetensors``: the inputs (``base.W``, ``task{t}.W``)
and FusionBench's merged tensor for each method (``{method}.W``), for a 24 x 16 and a 12 x 20
matrix and a 16-entry vector, three tasks. ``tests/methods/test_new_methods_reference.py`` compares
mergebuild's methods with them, so CI needs no FusionBench. Consensus merging has no one-call
FusionBench algorithm: its pieces (``generate_task_masks``, the mask count of
``construct_consensus_mask``, ``ties_merging``) are composed here as the TALL-masks paper does.
PCB is not in FusionBench: the paper's ``PCB_merge`` (``pcb-merging.py`` of its repository, the
part before its evolutionary-search script) is loaded from the path given and run as it is.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from fusion_bench.method.isotropic_merging.iso_utils import iso_c, iso_cts
from fusion_bench.method.magmax.magmax import _magmax_select
from fusion_bench.method.tall_mask.utils import generate_task_masks
from fusion_bench.method.task_singular_vector.utils.TSVM_utils import compute_and_sum_svd_mem_reduction
from fusion_bench.method.ties_merging.ties_merging_utils import ties_merging
from fusion_bench.method.wudi.wudi import wudi_merging
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "new_methods_reference.safetensors"
TASKS = 3
SHAPES = {"W": (24, 16), "V": (12, 20), "b": (16,)}
MASK_LAMBDA, K = 0.6, 2
# FusionBench's TIES trim keeps the entries >= the (n - int(n*K))-th smallest: int(n*K) + 1 of
# them; mergebuild keeps int(n * density). This K keeps 76 of 384 = int(384 * 0.2).
TIES_K = {"W": 75.5 / 384, "V": 47.5 / 240, "b": 2.5 / 16}  # V: 48 = int(240 * 0.2); b: 3


def inputs() -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """A base and three fine-tunes with different, partly overlapping updates."""
    g = torch.Generator().manual_seed(19)
    base = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    tasks = []
    for t in range(TASKS):
        tasks.append({k: base[k] + (0.1 + 0.05 * t) * torch.randn(s, generator=g) for k, s in SHAPES.items()})
    return base, tasks


def consensus(base: torch.Tensor, fts: list[torch.Tensor], ties: bool, key: str) -> torch.Tensor:
    """TALL-mask consensus over the flattened tensor, as the paper's code composes it."""
    tvs = torch.stack([(f - base).reshape(-1) for f in fts])
    merged = ties_merging(tvs.clone(), reset_thresh=TIES_K[key], merge_func="dis-mean") if ties else tvs.sum(0)
    flat_ft = torch.stack([f.reshape(-1) for f in fts])
    masks = generate_task_masks(tvs, flat_ft, base.reshape(-1), tv=merged, tall_mask_lambda=MASK_LAMBDA)
    keep = masks.float().sum(0) >= K
    return (base.reshape(-1) + merged * keep).reshape(base.shape)


def paper_pcb(path: str):
    """The paper's ``PCB_merge`` function, run from its own file (never copied here)."""
    code = Path(path).read_text().split("### With Evolutionary Strategies")[0]
    namespace: dict = {}
    exec(compile(code, path, "exec"), namespace)
    return namespace["PCB_merge"]


def main() -> None:
    pcb = paper_pcb(sys.argv[1])
    base, tasks = inputs()
    tvs = [{k: t[k] - base[k] for k in base} for t in tasks]
    out: dict[str, torch.Tensor] = {}
    for k in base:
        out[f"base.{k}"] = base[k]
        for i, t in enumerate(tasks):
            out[f"task{i}.{k}"] = t[k]
    merged = {
        "tsv": compute_and_sum_svd_mem_reduction([dict(tv) for tv in tvs], accelerator="cpu"),
        "iso_c": iso_c([dict(tv) for tv in tvs], accelerator="cpu"),
        "iso_cts": iso_cts([dict(tv) for tv in tvs], common_space_fraction=0.8, accelerator="cpu"),
        "magmax": {k: 0.5 * v for k, v in _magmax_select([dict(tv) for tv in tvs]).items()},
        "wudi": {
            k: v.detach() for k, v in wudi_merging([dict(tv) for tv in tvs], accelerator="cpu", iter_num=300).items()
        },
    }
    for name, tv in merged.items():
        for k in base:
            out[f"{name}.{k}"] = base[k] + tv[k]
    for k in base:
        out[f"consensus_ta.{k}"] = consensus(base[k], [t[k] for t in tasks], False, k)
        out[f"consensus_ties.{k}"] = consensus(base[k], [t[k] for t in tasks], True, k)
        merged_tv, _, _ = pcb(torch.stack([tv[k].reshape(-1) for tv in tvs]), pcb_ratio=0.1)
        out[f"pcb.{k}"] = base[k] + merged_tv.reshape(base[k].shape)
    save_file(
        {k: v.contiguous() for k, v in out.items()}, str(OUT), metadata={"generator": "bench/new_methods_reference.py"}
    )
    print(f"wrote {len(out)} tensors to {OUT}")


if __name__ == "__main__":
    main()
