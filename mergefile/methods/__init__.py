"""Merge methods: one module each, registered in ``registry.py`` (the one place to add one)."""

from mergefile.methods.apply import apply_method, run_method
from mergefile.methods.base import (
    REQUIRED,
    BaseRule,
    EmbedPolicy,
    MergeContext,
    Method,
    ParamCheckError,
    ParamSpec,
    Stage,
)
from mergefile.methods.registry import METHODS, get_method

__all__ = [
    "METHODS",
    "REQUIRED",
    "BaseRule",
    "EmbedPolicy",
    "MergeContext",
    "Method",
    "ParamCheckError",
    "ParamSpec",
    "Stage",
    "apply_method",
    "get_method",
    "run_method",
]
