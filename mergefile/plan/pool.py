"""What every plan collects while it is made: its input models in first-use order, its jobs' names."""

from __future__ import annotations

from mergefile.errors import ConfigError
from mergefile.plan.inputs import InputModel
from mergefile.plan.jobs import TensorJob
from mergefile.syntax.ast import Target

__all__ = ["Inputs", "check_unique"]


class Inputs:
    """A plan's input models in first-use order (job ``InputRef.model`` indexes them)."""

    def __init__(self) -> None:
        self.models: list[InputModel] = []

    def index_of(self, m: InputModel) -> int:
        for i, x in enumerate(self.models):
            if x is m:
                return i
        self.models.append(m)
        return len(self.models) - 1


def check_unique(jobs: list[TensorJob], t: Target) -> None:
    """Refuse a plan in which two recipes write one tensor."""
    seen: set[str] = set()
    for j in jobs:
        if j.name in seen:
            raise ConfigError(f"two recipes write tensor '{j.name}'", t.loc)
        seen.add(j.name)
