"""Progress display: rich bars on a terminal, nothing when quiet or piped.

One bar per target being built: tensors done/total, input MB/s and ETA. Rich's own
``TransferSpeedColumn`` would measure the bar's unit (tensors), so the bytes each finished
tensor read are counted in a task field and turned into a rate here.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

from mergefile.run.build import Progress


def _byte_rate_column():
    """A rich column showing ``task.fields['bytes'] / elapsed`` as MB/s (rich imported lazily)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class ByteRateColumn(ProgressColumn):
        def render(self, task) -> Text:
            elapsed = task.elapsed or 0.0
            nbytes = task.fields.get("bytes", 0)
            if elapsed <= 0 or nbytes <= 0:
                return Text("-- MB/s", style="progress.data.speed")
            return Text(f"{nbytes / elapsed / 1e6:.1f} MB/s", style="progress.data.speed")

    return ByteRateColumn()


class RichProgress(Progress):
    def __init__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RP

        self.console = Console(stderr=True)
        self.bar = RP(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("tensors"),
            _byte_rate_column(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.tasks: dict[str, int] = {}
        self.bytes: dict[str, int] = {}

    def start_target(self, name: str, total: int) -> None:
        self.tasks[name] = self.bar.add_task(name, total=total, bytes=0)
        self.bytes[name] = 0

    def advance(self, name: str, n: int = 1, nbytes: int = 0) -> None:
        if name in self.tasks:
            self.bytes[name] += nbytes
            self.bar.update(self.tasks[name], advance=n, bytes=self.bytes[name])

    def message(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def end_target(self, name: str) -> None:
        if name in self.tasks:
            self.bar.remove_task(self.tasks.pop(name))
            self.bytes.pop(name, None)


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
