"""What a merge method is: a pure function over tensors plus the data the planner needs.

A method never touches files, caches or devices. It declares its parameters (global ones take
one value per output tensor; ``per_model`` ones take one value per input model and tensor),
whether it needs a base model, how many models it takes, and an integer ``version`` that enters
every content key: bump it when the math changes and exactly its results rebuild.

Staged methods (the task-arithmetic family) also declare a per-model ``Stage`` whose output is
keyed and cached on its own, so editing a ``weight`` reuses every sparsified delta.
A method whose parameters have a valid range beyond their type declares a ``check``, which the
planner runs on every tensor's resolved parameters, so a bad value fails before any read.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mergefile._lazy import torch
from mergefile.errors import ConfigError


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


class BaseRule(enum.Enum):
    """How a method treats ``base=``."""

    REQUIRED = "required"
    OPTIONAL = "optional"
    IGNORED = "ignored"


class EmbedPolicy(enum.Enum):
    """What to do when embedding / lm_head rows differ between inputs (reference §1.6)."""

    COMMON = "common"  # cut every input to the largest common submatrix
    BASE = "base"  # cut other inputs to the base's shape
    EXACT = "exact"  # shapes must match


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: name, default (``REQUIRED`` if none), per-model or global, value type."""

    name: str
    default: Any = REQUIRED
    per_model: bool = False
    type: type = float
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class MergeContext:
    """What a method may know besides tensors and parameters."""

    tensor_name: str
    is_embed: bool = False
    base_index: int | None = None
    generator: torch.Generator | None = None
    # the caller hands over its list of (stage) inputs: a method may drop entries it has copied,
    # to lower its peak memory (compute.py does; a direct call keeps its tensors)
    consume_inputs: bool = False


# merge(tensors, per_model, params, ctx) -> tensor
#   tensors:   one per input model, in recipe order (the base included when there is one;
#              ctx.base_index says where). For staged methods, entries other than the base are
#              the outputs of the method's Stage for that model.
#   per_model: one mapping per tensor with the resolved per-model parameters (base included;
#              its required-but-unset per-model parameters are None).
#   params:    the resolved global parameters.
MergeFn = Callable[
    [Sequence["torch.Tensor"], Sequence[Mapping[str, Any]], Mapping[str, Any], MergeContext], "torch.Tensor"
]

# stage(x, base, params, ctx) -> tensor, run once per non-base model; ``params`` holds only the
# parameters named in ``Stage.params`` (that model's per-model values, and global ones).
StageFn = Callable[["torch.Tensor", "torch.Tensor", Mapping[str, Any], MergeContext], "torch.Tensor"]


# split(x, base, params, ctx) -> (what merge receives, its compact form or None): the compact
# form (e.g. a packed keep-mask) is what the stage cache stores; None means nothing worth storing.
SplitFn = Callable[
    ["torch.Tensor", "torch.Tensor", Mapping[str, Any], "MergeContext"], "tuple[torch.Tensor, torch.Tensor | None]"
]
# apply(x, base, compact) -> what merge receives, rebuilt from a cached compact form; must equal
# split's first result bit for bit.
ApplyFn = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]


@dataclass(frozen=True)
class Stage:
    """A per-model intermediate with its own content key (e.g. a sparsified task vector).

    Without ``split``/``apply`` the cache stores ``fn``'s output itself; with them it stores the
    compact form and rebuilds the stage output from it and the inputs (docs/cache.md).
    """

    name: str
    params: tuple[str, ...]
    fn: StageFn
    random: bool = False  # draws from ctx.generator (seed enters the key)
    split: SplitFn | None = None
    apply: ApplyFn | None = None


class ParamCheckError(ConfigError):
    """A method's parameter check failed; ``model`` is the index of the offending input, if any.

    The planner adds where it happened (model line, target, tensor), which a method cannot know.
    """

    def __init__(self, message: str, model: int | None = None, hint: str | None = None):
        super().__init__(message, None, hint)
        self.model = model


# bits(inputs, compact, per_model, params, ctx) -> flat uint16 array | None: ``merge`` (after
# the stages) done on bf16 bits without torch, so a build whose jobs all take it never imports
# torch. ``inputs``: the bf16 inputs as flat uint16 numpy arrays, one shape, base at
# ``ctx.base_index``; ``compact``: input index -> its stage's cached compact form (uint8 numpy),
# for every staged input. Must give the bits ``merge`` gives; None: run the torch steps instead.
BitsFn = Callable[[Sequence[Any], Mapping[int, Any], Sequence[Mapping[str, Any]], Mapping[str, Any], MergeContext], Any]


# check(params, per_model, base_index) -> None: validate one tensor's resolved parameters before
# any tensor is read (same arguments as MergeFn, no tensors); raise ParamCheckError.
CheckFn = Callable[[Mapping[str, Any], Sequence[Mapping[str, Any]], "int | None"], None]


@dataclass(frozen=True)
class Method:
    """A registered merge method. See the module docstring."""

    name: str
    version: int
    reference: str
    params: tuple[ParamSpec, ...]
    merge: MergeFn
    base: BaseRule = BaseRule.IGNORED
    min_models: int = 1
    max_models: int | None = None
    embed: EmbedPolicy = EmbedPolicy.COMMON
    stage: Stage | None = None
    random: bool = False  # merge draws from ctx.generator
    summary: str = ""
    aliases: tuple[str, ...] = field(default=())
    check: CheckFn | None = None  # parameter validation run by the planner for every tensor
    mergekit: bool = True  # mergekit can build it too; False marks a mergebuild extension (export says so)
    # modules a build imports in the background while it hashes inputs (like torch): the
    # compiled kernels this method calls, so their loading overlaps the build's start
    warm: tuple[str, ...] = field(default=())
    bits: BitsFn | None = None  # the torch-free bf16 path of merge (run/compute_bits.py)

    def param(self, name: str) -> ParamSpec | None:
        for p in self.params:
            if p.name == name:
                return p
        return None

    @property
    def global_params(self) -> tuple[ParamSpec, ...]:
        return tuple(p for p in self.params if not p.per_model)

    @property
    def model_params(self) -> tuple[ParamSpec, ...]:
        return tuple(p for p in self.params if p.per_model)
