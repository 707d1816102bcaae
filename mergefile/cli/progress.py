"""Progress display: rich bars on a terminal, nothing when quiet or piped."""

from __future__ import annotations

import sys
from contextlib import contextmanager

from mergefile.run.build import Progress


class RichProgress(Progress):
    def __init__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RP, TextColumn, TimeRemainingColumn, TransferSpeedColumn

        self.console = Console(stderr=True)
        self.bar = RP(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("tensors"),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.tasks: dict[str, int] = {}

    def start_target(self, name: str, total: int) -> None:
        self.tasks[name] = self.bar.add_task(name, total=total)

    def advance(self, name: str, n: int = 1, nbytes: int = 0) -> None:
        if name in self.tasks:
            self.bar.update(self.tasks[name], advance=n)

    def message(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def end_target(self, name: str) -> None:
        if name in self.tasks:
            self.bar.remove_task(self.tasks.pop(name))


class PlainProgress(Progress):
    def message(self, text: str) -> None:
        print(text, file=sys.stderr)


@contextmanager
def make_progress(quiet: bool):
    if quiet:
        yield PlainProgress()
        return
    p = RichProgress()
    with p.bar:
        yield p
