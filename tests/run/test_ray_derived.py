"""Derived inputs on Ray: a LoRA applied on load and MoE gate vectors are made once by the driver,
cached under their keys, and read by the workers; outputs equal the local executor's bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import assert_same_tensors, cli, mergefile_for, read_tensors
from tests.targets.test_lora_input import adapter, mergefile  # noqa: F401 - the module's fixture
from tests.targets.test_moe import MIXTRAL

ray = pytest.importorskip("ray")

LORA = """
out/x: linear { ml weight=0.5 ; b weight=0.5 }
"""


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _local_and_ray(make, target: str, tmp_path: Path) -> tuple[Path, Path]:
    dirs = tmp_path / "local", tmp_path / "ray"
    for d in dirs:
        make(d)
    assert cli(dirs[0], "-j", "2", target, cache=dirs[0] / "cache") == 0
    assert cli(dirs[1], "--executor", "ray", "-j", "2", target, cache=dirs[1] / "cache") == 0
    return dirs


def test_lora_input_on_ray(tiny_models, adapter, tmp_path, local_ray) -> None:  # noqa: F811
    local, remote = _local_and_ray(lambda d: mergefile(d, tiny_models, adapter, LORA), "out/x", tmp_path)
    assert_same_tensors(read_tensors(local / "out/x"), read_tensors(remote / "out/x"))


def test_hidden_gates_on_ray(tiny_models, tmp_path, local_ray) -> None:
    def make(d: Path) -> None:
        d.mkdir()
        mergefile_for(d, {k: tiny_models[k] for k in ("base", "a", "b", "c")}, MIXTRAL)

    local, remote = _local_and_ray(make, "out/moe", tmp_path)
    assert_same_tensors(read_tensors(local / "out/moe"), read_tensors(remote / "out/moe"))
