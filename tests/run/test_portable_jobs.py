"""Serializable tensor tasks (what the Ray executor ships), run in-process: no Ray needed.

A task pickles with plain pickle, rebuilds its reader and cache from paths, computes the same
bytes as the local build, writes nothing to the cache itself (the driver stores what it
returns), and re-fetches a hub file that is missing on the worker into its own hub cache.
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest
import torch

from mergefile.run.build import BuildOptions, plan_build
from mergefile.run.compute import JobResult
from mergefile.run.portable import PortableOutput, absorb, make_portable
from mergefile.store.store import Store
from mergefile.syntax import parse_mergefile
from tests.helpers import cli, mergefile_for, read_tensors

RECIPE = """
out/ties: ties(base=base) { a weight=0.7 density=0.5 ; b weight=0.5 density=0.4 }
out/next: linear { out/ties weight=1 ; c weight=1 }
"""


@pytest.fixture
def built(tiny_models, tmp_path):
    mergefile_for(tmp_path, tiny_models, RECIPE)
    assert cli(tmp_path, "out/next", cache=tmp_path / "cache") == 0
    mf = parse_mergefile(tmp_path / "Mergefile")
    with Store(tmp_path / "cache") as store:
        planned = {p.name: kp for p, kp, _, _ in plan_build(mf, ["out/next"], store, BuildOptions())}
    return tmp_path, planned


def _task(kp, name: str, cache: Path, **kw):
    job = next(j for j in kp.plan.jobs if j.name == name)
    return make_portable(job, kp, str(cache / "blobs"), 2**30, **kw)


@pytest.mark.parametrize("read_to_device", [False, True])
def test_task_pickles_and_recomputes_the_same_bytes(built, read_to_device):
    d, planned = built
    name = "model.layers.1.mlp.down_proj.weight"
    for target in ("out/ties", "out/next"):  # model-file inputs; an upstream target's blob
        task = pickle.loads(pickle.dumps(_task(planned[target], name, d / "cache", read_to_device=read_to_device)))
        out = task()
        assert isinstance(out, PortableOutput) and isinstance(out.result, JobResult)
        assert out.blobs and out.blobs[-1][0] == task.key
        with Store(d / "empty") as fresh:
            res = absorb(out, fresh.blobs)
            assert res.bytes_written > 0
            assert torch.equal(fresh.blobs.get(task.key), read_tensors(d / target)[name])


def test_task_reads_upstream_output_folder_when_its_blob_is_gone(built):
    d, planned = built
    name = "model.norm.weight"
    task = _task(planned["out/next"], name, d / "cache")
    with Store(d / "cache") as store:
        for i in task.inputs:
            store.blobs.delete(i.key)
    out = task()
    with Store(d / "other") as other:
        absorb(out, other.blobs)
        assert torch.equal(other.blobs.get(task.key), read_tensors(d / "out/next")[name])


def test_missing_hub_file_is_fetched_into_the_workers_hub_cache(built, monkeypatch, tmp_path):
    d, planned = built
    name = "model.layers.0.self_attn.q_proj.weight"
    task = _task(planned["out/ties"], name, d / "cache")
    fetched = []
    real_files: dict[str, str] = {}

    def fake_download(repo, filename, revision=None):
        fetched.append((repo, filename, revision))
        return real_files[filename]

    inputs = []
    for i in task.inputs:  # pretend each model came from the hub and is not on this worker
        fname = Path(i.info.file).name
        real_files[f"{i.model}/{fname}"] = i.info.file
        gone = dataclasses.replace(i.info, file=str(tmp_path / "elsewhere" / fname))
        inputs.append(dataclasses.replace(i, info=gone, hub=("org/m", "0" * 40, f"{i.model}/{fname}")))
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    out = dataclasses.replace(task, inputs=tuple(inputs))()
    assert len(fetched) == len(inputs) and all(rev == "0" * 40 for _, _, rev in fetched)
    with Store(tmp_path / "other") as other:
        absorb(out, other.blobs)
        assert torch.equal(other.blobs.get(task.key), read_tensors(d / "out/ties")[name])


def test_make_task_names_hub_files_by_snapshot_path(tmp_path):
    from types import SimpleNamespace

    from mergefile.io.header import TensorInfo
    from mergefile.plan.inputs import InputModel
    from mergefile.plan.jobs import InputRef
    from mergefile.run.portable import hub_file_names

    commit = "ab" * 20
    blob = tmp_path / "models--org--m" / "blobs" / ("f" * 64)
    snap = tmp_path / "models--org--m" / "snapshots" / commit
    blob.parent.mkdir(parents=True)
    (snap / "sub").mkdir(parents=True)
    blob.write_bytes(b"x" * 16)
    (snap / "sub" / "model.safetensors").symlink_to(blob)
    info = TensorInfo("w", "F32", (2,), str(blob.resolve()), 8, 16)
    model = InputModel(label="m", path=str(snap), config={}, tensors={"w": info}, hub=("org/m", "main"))
    plan = SimpleNamespace(inputs=[model])
    job = SimpleNamespace(name="w", inputs=(InputRef(0, "w"),))
    kp = SimpleNamespace(plan=plan, input_keys={(0, "w"): "k-in"}, keys={"w": "k-out"})
    task = make_portable(job, kp, str(tmp_path / "cache"), 1, "cuda:1", hub_names=hub_file_names(plan))
    assert task.inputs[0].hub == ("org/m", commit, "sub/model.safetensors")
    assert task.inputs[0].info == info and task.device == "cuda"  # Ray picks the worker's GPU


def test_executor_modules_import_neither_torch_nor_ray():
    import subprocess
    import sys

    from tests.helpers import REPO

    code = (
        "import sys\n"
        "import mergefile.run.build, mergefile.run.portable, mergefile.run.schedule, mergefile.run.ray_executor\n"
        "import mergefile.cli.main\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'ray' not in sys.modules, 'ray imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
