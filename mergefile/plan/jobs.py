"""The plan of one target: output tensors as frozen jobs (the unit of work: docs/architecture.md), plus the output folder's shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergefile.methods.base import Method
from mergefile.plan.inputs import InputModel
from mergefile.syntax.ast import Target

Frozen = tuple[tuple[str, Any], ...]  # a parameter mapping, sorted, hashable


def freeze(d: dict[str, Any]) -> Frozen:
    return tuple(sorted(d.items()))


@dataclass(frozen=True)
class InputRef:
    """Tensor ``tensor`` of input model number ``model`` of the plan."""

    model: int
    tensor: str


@dataclass(frozen=True)
class TensorJob:
    """One output tensor: how it is made. Its content key is computed from this + input keys."""

    name: str
    group: tuple  # ("pre",) | ("layer", i) | ("post",), + (module,) in a multi-module model: the shard
    method: str
    inputs: tuple[InputRef, ...]
    base_index: int | None
    params: Frozen
    per_model: tuple[Frozen, ...]
    dtype: str | None  # compute dtype (inputs cast on load)
    out_dtype: str | None  # dtype written
    is_embed: bool
    seed: int
    result_dtype: str  # safetensors code of the written tensor (planned)
    result_shape: tuple[int, ...]
    vocab: str | None = None  # digest of the vocabulary remap (plan.vocab.remaps[name]) applied first

    @property
    def nbytes(self) -> int:
        from mergefile.io.header import DTYPE_SIZES

        n = 1
        for s in self.result_shape:
            n *= s
        return n * DTYPE_SIZES[self.result_dtype]


@dataclass
class TargetPlan:
    """Everything needed to build (or explain) one target, computed without tensor data."""

    name: str
    out_dir: Path
    target: Target
    method: Method
    inputs: list[InputModel]
    jobs: list[TensorJob]
    config: dict  # config.json of the output
    donor: InputModel  # tokenizer / generation_config donor
    num_layers: int
    layer_key: str | None
    warnings: list[str] = field(default_factory=list)
    shard_names: dict[tuple, str] = field(default_factory=dict)
    vocab: Any = None  # plan.vocab.VocabPlan when the target merges tokenizers / sets a chat template
    # A target kind's output layout (mergefile.targets), None for a Hugging Face model folder:
    # write_files(folder, config) writes its config files once the weights are in the folder,
    # card_texts(plan) -> {file: text}, dynamic_shapes: tensor shapes are known only once computed.
    layout: Any = None
    hub_lineage: tuple[str, ...] = ()  # Hub ids it derives from, through upstream targets (card base_model)

    def assign_shards(self) -> None:
        """Layer-stable shards: one file for pre-layer tensors, one per layer, one for post."""
        groups = sorted({j.group for j in self.jobs}, key=_group_order)
        n = len(groups)
        if n == 1:
            self.shard_names = {groups[0]: "model.safetensors"}
        else:
            self.shard_names = {g: f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i, g in enumerate(groups)}

    def shard_of(self, job: TensorJob) -> str:
        return self.shard_names[job.group]

    def as_output_model(self) -> InputModel:
        """How a downstream target sees this one: its planned tensors and config."""
        from mergefile.plan.inputs import TensorMeta

        tensors = {j.name: TensorMeta(j.name, j.result_dtype, j.result_shape) for j in self.jobs}
        return InputModel(
            label=self.name, path=str(self.out_dir), config=self.config, tensors=tensors, target=self.name
        )


def _group_order(g: tuple) -> tuple:
    """Module by module ("" for a single-module model), then pre, layers in order, post."""
    kind = g[0]
    index = g[1] if kind == "layer" and len(g) > 1 else 0
    rest = g[2:] if kind == "layer" else g[1:]
    return (rest, {"pre": 0, "layer": 1, "post": 2}[kind], index)
