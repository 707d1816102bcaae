"""A Hugging Face model folder, seen through its safetensors headers.

Opening a model reads ``config.json`` and the header of each weight file: cheap enough to do for
every input of every build. Folders holding only pickled weights (``pytorch_model*.bin``,
``*.pt``) are refused unless the user opts in, because unpickling can run code; with the opt-in
they are loaded weights-only and converted once to safetensors in a cache folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import xxhash

from mergefile._lazy import torch
from mergefile.errors import UserError
from mergefile.io.header import DTYPE_CODES, TensorInfo, read_header
from mergefile.io.writer import tensor_bytes, write_safetensors

__all__ = ["ModelDir"]

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PICKLE_INDEX_FILE = "pytorch_model.bin.index.json"
# Pickles found in training checkpoints that are not model weights.
_NOT_WEIGHTS = {"optimizer.pt", "scheduler.pt", "training_args.bin", "optimizer.bin"}
# Bump when the conversion output changes, so old conversions are not reused.
CONVERT_VERSION = 1


@dataclass
class ModelDir:
    """A model folder: its config and where each tensor lives. No tensor data is read.

    Example:
        >>> model = ModelDir.open("models/mistral-7b")
        >>> model.tensors["lm_head.weight"].shape
        (32000, 4096)
    """

    path: str
    config: dict
    tensors: dict[str, TensorInfo]
    files: tuple[str, ...]

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        allow_pickle: bool = False,
        convert_dir: str | Path | None = None,
    ) -> ModelDir:
        """Index a model folder by reading its config and weight-file headers.

        Args:
            path: a folder in the Hugging Face layout (``model.safetensors``, or shards with
                ``model.safetensors.index.json``).
            allow_pickle: read a folder that has only pickled weights (weights-only unpickling),
                converting it once to safetensors.
            convert_dir: where conversions are kept (default ``$XDG_CACHE_HOME/mergebuild/converted``).

        Returns:
            The indexed folder.

        Raises:
            UserError: missing folder, no weights, pickled weights without ``allow_pickle``, a
                broken index or header, or a tensor name found in two files.
        """
        folder = _check_folder(path)
        config = _read_config(folder)
        files = _safetensors_files(folder)
        if not files:
            pickles = _pickle_files(folder)
            if not pickles:
                raise UserError(
                    f"model folder '{path}' has no weights: expected model.safetensors, "
                    f"safetensors shards with {INDEX_FILE}, or pytorch_model*.bin"
                )
            if not allow_pickle:
                names = ", ".join(os.path.basename(p) for p in pickles[:3])
                raise UserError(
                    f"model folder '{path}' has only pickled weights ({names}). Loading a pickle "
                    "can run arbitrary code; pass --allow-pickle to read them anyway (mergebuild "
                    "loads them weights-only and converts them once to safetensors)."
                )
            files = _convert_pickles(pickles, convert_dir)
        tensors = _index(files)
        if os.path.exists(os.path.join(folder, INDEX_FILE)):
            _check_weight_map(os.path.join(folder, INDEX_FILE), tensors)
        return cls(folder, config, tensors, tuple(files))


def _check_folder(path: str | Path) -> str:
    folder = os.path.realpath(path)
    if not os.path.exists(folder):
        raise UserError(f"model folder '{path}' does not exist")
    if not os.path.isdir(folder):
        raise UserError(f"model path '{path}' is a file; expected a folder holding config.json and weights")
    return folder


def _read_config(folder: str) -> dict:
    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"'{path}' is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise UserError(f"'{path}' must hold a JSON object")
    return config


def _read_weight_map(index_path: str) -> dict[str, str]:
    try:
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise UserError(f"'{index_path}' is not a valid weight index: {e}") from None
    return weight_map


def _check_weight_map(index_path: str, tensors: dict[str, TensorInfo]) -> None:
    """Every tensor the index names must be in the file it names (else the folder is broken)."""
    for name, file in _read_weight_map(index_path).items():
        info = tensors.get(name)
        if info is None or os.path.basename(info.file) != os.path.basename(str(file)):
            raise UserError(
                f"'{index_path}' says tensor '{name}' is in '{file}', but that file does not "
                "hold it; the folder mixes files from different versions of the model"
            )


def _weight_map_files(folder: str, index_name: str) -> list[str]:
    """The files an index's ``weight_map`` points to, in first-use order."""
    index_path = os.path.join(folder, index_name)
    weight_map = _read_weight_map(index_path)
    files = []
    for name in dict.fromkeys(weight_map.values()):
        file = os.path.join(folder, str(name))
        if not os.path.isfile(file):
            raise UserError(
                f"'{index_path}' lists weight file '{name}', which is missing from the folder (an incomplete download?)"
            )
        files.append(os.path.realpath(file))
    return files


def _safetensors_files(folder: str) -> list[str]:
    """Weight files as transformers would pick them: the index, else model.safetensors, else all."""
    if os.path.exists(os.path.join(folder, INDEX_FILE)):
        return _weight_map_files(folder, INDEX_FILE)
    if os.path.isfile(os.path.join(folder, SINGLE_FILE)):
        return [os.path.realpath(os.path.join(folder, SINGLE_FILE))]
    return [
        os.path.realpath(os.path.join(folder, n))
        for n in sorted(os.listdir(folder))
        if n.endswith(".safetensors") and os.path.isfile(os.path.join(folder, n))
    ]


def _pickle_files(folder: str) -> list[str]:
    if os.path.exists(os.path.join(folder, PICKLE_INDEX_FILE)):
        return _weight_map_files(folder, PICKLE_INDEX_FILE)
    names = sorted(os.listdir(folder))
    picked = [n for n in names if n.startswith("pytorch_model") and n.endswith(".bin")]
    if not picked:
        picked = [n for n in names if n.endswith((".pt", ".pth")) and n not in _NOT_WEIGHTS]
        picked = [n for n in picked if not n.startswith("rng_state")]
    return [os.path.realpath(os.path.join(folder, n)) for n in picked]


def _index(files: list[str]) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    for file in files:
        found, _ = read_header(file)
        for name, info in found.items():
            if name in tensors:
                raise UserError(
                    f"tensor '{name}' is in two weight files, '{tensors[name].file}' and "
                    f"'{file}'; remove the stray file or add a {INDEX_FILE}"
                )
            tensors[name] = info
    return tensors


def _default_convert_dir() -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "mergebuild", "converted")


def _conversion_key(pickles: list[str]) -> str:
    """xxh3 of each file's (real path, size, mtime_ns): a changed file converts again."""
    h = xxhash.xxh3_128(f"mergebuild-convert-v{CONVERT_VERSION}".encode())
    for file in pickles:
        st = os.stat(file)
        h.update(json.dumps([file, st.st_size, st.st_mtime_ns]).encode("utf-8"))
    return h.hexdigest()


def _load_pickle(file: str) -> dict[str, torch.Tensor]:
    """Weights-only unpickling (mmap when the zip format allows it)."""
    try:
        try:
            obj = torch.load(file, weights_only=True, map_location="cpu", mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(file, weights_only=True, map_location="cpu")  # legacy format
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad input file
        raise UserError(
            f"could not load '{file}' weights-only ({type(e).__name__}: {e}); it may hold "
            "objects other than tensors, or be corrupt. Convert it to safetensors yourself."
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise UserError(f"'{file}' does not hold a state dict (a map of names to tensors)")
    for name, t in obj.items():
        if t.dtype not in DTYPE_CODES:
            raise UserError(f"'{file}': tensor '{name}' has dtype {t.dtype}, not storable in safetensors")
    return obj


def _convert_pickles(pickles: list[str], convert_dir: str | Path | None) -> list[str]:
    """Convert pickles to safetensors once; reuse the conversion while the pickles are unchanged.

    The conversion is written in a temp folder and renamed into place, so an interrupted run
    leaves no half conversion behind.
    """
    root = os.fspath(convert_dir) if convert_dir is not None else _default_convert_dir()
    target = os.path.join(root, _conversion_key(pickles))
    names = [os.path.splitext(os.path.basename(p))[0] + ".safetensors" for p in pickles]
    if len(set(names)) < len(names):  # model.pt beside model.pth
        names = [os.path.basename(p) + ".safetensors" for p in pickles]
    if os.path.isdir(target) and not all(os.path.isfile(os.path.join(target, n)) for n in names):
        shutil.rmtree(target, ignore_errors=True)  # someone deleted files from it: redo
    if not os.path.isdir(target):
        os.makedirs(root, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".converting-", dir=root)
        try:
            for src, name in zip(pickles, names):
                state = _load_pickle(src)
                entries = [
                    (k, DTYPE_CODES[t.dtype], tuple(t.shape), (lambda t=t: tensor_bytes(t))) for k, t in state.items()
                ]
                write_safetensors(os.path.join(tmp, name), entries, {"format": "pt"})
                del state, entries
            with open(os.path.join(tmp, "source.json"), "w", encoding="utf-8") as f:
                json.dump({"converted_from": pickles}, f, indent=2)
            try:
                os.rename(tmp, target)
            except OSError:
                if not os.path.isdir(target):  # lost a race to a concurrent conversion: fine
                    raise
        finally:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
    return [os.path.join(os.path.realpath(target), n) for n in names]
