"""``--device cuda`` builds (issue 9): skipped without a CUDA device.

CPU and CUDA builds of one recipe agree within float tolerance (each with its own cache: keys
deliberately leave the device out, so a shared cache would just hand back the CPU result);
``--read-to-device`` gives the same bytes as reading on the host; a CUDA build over a CPU-built
cache computes nothing; the memory budget bounds GPU memory.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import cli, cli_json, mergefile_for, read_tensors
from tests.run.test_methods_e2e import RECIPES

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

BODY = "\n".join(f"out/{m}: {r}" for m, r in RECIPES.items()) + f"\nall: {' '.join(f'out/{m}' for m in RECIPES)}"


def _three(models):
    return {k: models[k] for k in ("base", "a", "b")}


@pytest.fixture(scope="module")
def builds(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu")
    flags = {"cpu": (), "cuda": ("--device", "cuda"), "cuda-rtd": ("--device", "cuda", "--read-to-device")}
    for name, extra in flags.items():
        d = root / name
        d.mkdir()
        mergefile_for(d, _three(tiny_models), BODY)
        assert cli(d, "-j", "2", *extra, "all", cache=d / "cache") == 0
    return root


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_cpu_and_cuda_builds_agree(builds, name):
    cpu, gpu = read_tensors(builds / "cpu/out" / name), read_tensors(builds / "cuda/out" / name)
    assert sorted(cpu) == sorted(gpu)
    for k in cpu:
        assert cpu[k].dtype == gpu[k].dtype, k
        torch.testing.assert_close(gpu[k], cpu[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_read_to_device_changes_nothing(builds, name):
    a, b = read_tensors(builds / "cuda/out" / name), read_tensors(builds / "cuda-rtd/out" / name)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)


def test_cuda_build_over_a_cpu_cache_computes_nothing(builds, capsys):
    d = builds / "cpu"
    r = cli_json(d, "--device", "cuda", "all", cache=d / "cache", capsys=capsys)
    assert r["exit"] == 0 and all(t["up_to_date"] for t in r["targets"])


def test_memory_budget_bounds_gpu_memory(tiny_models, tmp_path):
    from mergefile.run.build import BuildOptions, plan_build
    from mergefile.run.portable import job_peak_bytes
    from mergefile.store.store import Store
    from mergefile.syntax import parse_mergefile

    mergefile_for(
        tmp_path, tiny_models, "out/x: ties(base=base) { a weight=1 density=0.5 ; b weight=1 density=0.5 ; c weight=1 }"
    )
    with Store(tmp_path / "cache") as store:
        planned = plan_build(parse_mergefile(tmp_path / "Mergefile"), ["out/x"], store, BuildOptions())
    biggest = max(job_peak_bytes(j, planned[0][1].plan, "cuda") for j in planned[0][1].plan.jobs)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    assert (
        cli(tmp_path, "-j", "8", "--device", "cuda", "--memory-budget", str(2 * biggest), cache=tmp_path / "cache") == 0
    )
    # estimates are estimates: allow the method's own temporaries on top of the budget
    assert torch.cuda.max_memory_allocated() - base <= 2 * biggest + 4 * biggest
