"""Tensor jobs made portable, for executors that run them in other processes or machines.

A local build hands its thread pool closures over one shared reader and loader. A closure does
not travel, so each scheduled job also carries a :class:`PortableJob`: a frozen description of one
output tensor (the job, its key and input keys, where each input lives, the cache folder, the
device) that rebuilds a reader and a blob store from paths on the worker and calls
:func:`~mergefile.run.compute.compute_job` — the same code the local executor runs, hence the
same bytes.

Where inputs are read from (shared storage is assumed):

* model files: the byte range of the driver's path (``TensorInfo``); a file missing on a worker
  that came from the Hugging Face Hub is fetched into the worker's own hub cache at the same
  commit (same bytes, same offsets);
* upstream targets: the blob under its key in the cache folder, else the published output folder;
* derived inputs (a LoRA applied on load, MoE gate vectors): made once on the driver when the
  portable job is made (they need the whole base model or the adapter at hand) and cached under their
  keys; the worker reads the blob.

Results travel back: the worker writes nothing to the cache. Every blob ``compute_job`` would
store (the tensor and its cached stages) is captured and returned as raw bytes (numpy arrays,
which Ray moves zero-copy through its object store), and :func:`absorb` puts them into the
driver's store. One writer keeps the SQLite index of the cache off network filesystems.

Nothing here imports torch at module import.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mergefile._lazy import torch
from mergefile.io.header import DTYPE_SIZES, TensorInfo, dtype_code
from mergefile.plan.inputs import InputModel
from mergefile.plan.jobs import TargetPlan, TensorJob
from mergefile.run.plan_keys import KeyedPlan

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def job_peak_bytes(job: TensorJob, plan: TargetPlan, device: str = "cpu") -> int:
    """Estimated bytes one job holds at its peak, for the memory budget and ``-n``.

    Its inputs as read, their copies in the compute dtype (when a cast or a device move makes
    one), and two output-sized buffers (result and one temporary) in the working precision
    (half-precision inputs are computed in float32). With ``--device cuda`` the copies and the
    buffers are device bytes, so the same budget bounds GPU memory.
    """
    infos = [plan.inputs[r.model].tensors[r.tensor] for r in job.inputs]
    raw = sum(i.nbytes for i in infos)
    if not infos:
        return 2 * job.nbytes
    first = infos[job.base_index if job.base_index is not None and job.base_index < len(infos) else 0]
    code = dtype_code(job.dtype) if job.dtype else first.dtype
    size = DTYPE_SIZES[code]
    copies = sum(_numel(i.shape) * size for i in infos if device != "cpu" or i.dtype != code)
    return raw + copies + 2 * _numel(job.result_shape) * max(size, 4)


@dataclass(frozen=True)
class PortableInput:
    """Where one input tensor of a portable job lives (see the module docstring)."""

    model: int
    tensor: str
    key: str
    info: TensorInfo | None = None  # a model file's byte range
    output_dir: str | None = None  # an upstream target's output folder
    derived: bool = False  # made by the driver: only in the cache, under ``key``
    hub: tuple[str, str, str] | None = None  # (repo, commit or revision, file name) of a hub file


@dataclass(frozen=True)
class PortableJob:
    """One output tensor, self-contained and picklable; calling it computes the tensor."""

    job: TensorJob
    key: str
    inputs: tuple[PortableInput, ...]
    cache_dir: str  # the blob store folder (shared storage)
    cache_size: int  # its size limit (diskcache records it; keep the driver's)
    device: str = "cpu"
    read_to_device: bool = False
    allow_pickle: bool = False

    def __call__(self) -> PortableOutput:
        from mergefile.io.reader import TensorReader
        from mergefile.run.compute import InputLoader, compute_job
        from mergefile.store.blobs import BlobStore

        store = BlobStore(self.cache_dir, self.cache_size)
        blobs = _CapturingBlobs(store)
        reader = TensorReader()
        try:
            loader: Any = InputLoader(_PortablePlan(self._models()), reader, blobs, self.allow_pickle)
            if self.read_to_device:
                loader = DeviceLoader(loader, self.device)
            kp = KeyedPlan(
                None,
                {(i.model, i.tensor): i.key for i in self.inputs},  # type: ignore[arg-type]
                {self.job.name: self.key},
            )
            _, res = compute_job(self.job, kp, loader, blobs, self.device)
        finally:
            reader.close()
            store.close()
        return PortableOutput(res, tuple(_pack(k, t) for k, t in blobs.puts))

    def _models(self) -> dict[int, InputModel]:
        """The inputs as :class:`InputLoader` expects them, pruned to this job's tensors."""
        models: dict[int, InputModel] = {}
        for i in self.inputs:
            upstream = "derived" if i.derived else "upstream" if i.output_dir else None
            m = models.setdefault(
                i.model, InputModel(label=str(i.model), path=i.output_dir or "", config={}, tensors={}, target=upstream)
            )
            if i.info is not None:
                m.tensors[i.tensor] = _local_file(i)  # type: ignore[index]
        return models


@dataclass
class _PortablePlan:
    """The one part of a :class:`TargetPlan` that :class:`InputLoader` reads."""

    inputs: dict[int, InputModel]


def _local_file(i: PortableInput) -> TensorInfo:
    """The input's byte range, re-fetched into this worker's hub cache if the file is not here."""
    info = i.info
    assert info is not None
    if i.hub is None or os.path.exists(info.file):
        return info
    from huggingface_hub import hf_hub_download

    repo, revision, filename = i.hub
    path = hf_hub_download(repo, filename, revision=revision)
    return dataclasses.replace(info, file=os.path.realpath(path))


def make_portable(
    job: TensorJob,
    kp: KeyedPlan,
    cache_dir: str,
    cache_size: int,
    device: str = "cpu",
    read_to_device: bool = False,
    allow_pickle: bool = False,
    hub_names: dict[int, dict[str, str]] | None = None,
    derive: Callable[[Any, str], TensorInfo | None] | None = None,
) -> PortableJob:
    """The portable job computing ``job`` of a keyed plan (driver side; reads no tensor data, except
    to make derived inputs).

    Args:
        hub_names: per hub model index, real file path -> file name in its snapshot (from
            :func:`hub_file_names`); without it, hub files are assumed on shared storage.
        derive: ``derive(input_ref, key)`` makes a derived input and caches it under ``key``
            (the driver's loader), or returns the file byte range of one that is in fact read
            straight from a file (a tensor the LoRA does not touch); required when the job
            reads a derived input.
    """
    plan = kp.plan
    inputs = []
    for r in job.inputs:
        model = plan.inputs[r.model]
        key = kp.input_keys[(r.model, r.tensor)]
        if getattr(model, "source", None) is not None:  # derived tensors: made here, read from the cache
            if derive is None:
                raise ValueError(
                    f"input '{model.label}' is derived (a LoRA applied, MoE gates): make_portable needs derive"
                )
            info = derive(r, key)
            inputs.append(PortableInput(r.model, r.tensor, key, info=info, derived=info is None))
            continue
        if model.target is not None:
            inputs.append(PortableInput(r.model, r.tensor, key, output_dir=str(model.path)))
            continue
        info = model.tensors[r.tensor]
        hub = None
        names = (hub_names or {}).get(r.model)
        if model.hub is not None and names and info.file in names:
            commit = os.path.basename(os.path.normpath(model.path))
            hub = (model.hub[0], commit if _COMMIT.match(commit) else (model.hub[1] or "main"), names[info.file])
        inputs.append(PortableInput(r.model, r.tensor, key, info=info, hub=hub))
    return PortableJob(
        job,
        kp.keys[job.name],
        tuple(inputs),
        cache_dir,
        cache_size,
        "cuda" if device.startswith("cuda") else device,
        read_to_device,
        allow_pickle,
    )


def hub_file_names(plan: TargetPlan) -> dict[int, dict[str, str]]:
    """For each hub input, its snapshot's files by real path (the hub cache links them to blobs)."""
    out: dict[int, dict[str, str]] = {}
    for idx, model in enumerate(plan.inputs):
        if model.hub is None or model.target is not None:
            continue
        names: dict[str, str] = {}
        for root, _, files in os.walk(model.path):
            for f in files:
                full = os.path.join(root, f)
                names[os.path.realpath(full)] = os.path.relpath(full, model.path)
        out[idx] = names
    return out


class _CapturingBlobs:
    """Reads through to the shared cache; keeps every put for the driver to store."""

    def __init__(self, store):
        self.store = store
        self.puts: list[tuple[str, Any]] = []

    def get(self, key: str, **kw):
        for k, t in self.puts:
            if k == key:
                return t
        return self.store.get(key, **kw)

    def put(self, key: str, tensor) -> int:
        self.puts.append((key, tensor))
        return 0  # the driver counts the bytes it writes

    def __contains__(self, key: object) -> bool:
        return any(k == key for k, _ in self.puts) or key in self.store


@dataclass(frozen=True)
class PortableOutput:
    """What a worker sends back: the job's result record and the blobs to store."""

    result: Any  # JobResult
    blobs: tuple[tuple[str, str, tuple[int, ...], Any], ...]  # (key, dtype code, shape, uint8 array)


def _pack(key: str, tensor) -> tuple[str, str, tuple[int, ...], Any]:
    from mergefile.io.header import DTYPE_CODES

    t = tensor.detach().to("cpu").contiguous()
    return key, DTYPE_CODES[t.dtype], tuple(t.shape), t.reshape(-1).view(torch.uint8).numpy()


def _unpack(code: str, shape: tuple[int, ...], data) -> Any:
    from mergefile.io.header import TORCH_DTYPES

    dtype = TORCH_DTYPES[code]
    if len(data) == 0:
        return torch.empty(shape, dtype=dtype)
    with warnings.catch_warnings():  # arrays from Ray's object store are read-only; we only read
        warnings.simplefilter("ignore", UserWarning)
        flat = torch.frombuffer(memoryview(data), dtype=torch.uint8)
    return flat.view(dtype).reshape(shape)


def absorb(out: Any, blobs) -> Any:
    """The :class:`JobResult` of a scheduled job's output, storing a portable job's blobs first."""
    if not isinstance(out, PortableOutput):
        return out
    res = out.result
    for key, code, shape, data in out.blobs:
        t = _unpack(code, shape, data)
        res.bytes_written += blobs.put(key, t)
        if key == res.key:
            res.tensor = t
    return res


class DeviceLoader:
    """``--read-to-device``: hands out inputs already on the device (cast there, not on the host).

    Wraps an :class:`InputLoader`; everything else is delegated to it.
    """

    def __init__(self, loader, device: str):
        self._loader = loader
        self._device = device

    def load(self, ref, key: str):
        t, n = self._loader.load(ref, key)
        return t.to(self._device, non_blocking=True), n

    def __getattr__(self, name: str):
        return getattr(self._loader, name)
