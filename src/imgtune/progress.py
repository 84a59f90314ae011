"""Progress bars and one-line messages on stderr, silenced together by `quiet`."""

from __future__ import annotations

import contextlib

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_console = Console(stderr=True, highlight=False)


class Reporter:
    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def say(self, message: str) -> None:
        if not self.quiet:
            _console.print(message, markup=False)

    @contextlib.contextmanager
    def bar(self, description: str, total: int):
        """Yields `advance(n)`; draws nothing when quiet or when stderr is not a terminal-like stream."""
        if self.quiet or total <= 0:
            yield lambda n=1, **fields: None
            return
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
        with Progress(*columns, console=_console) as p:
            task = p.add_task(description, total=total, info="")

            def advance(n: int = 1, info: str = "") -> None:
                p.update(task, advance=n, info=info)

            yield advance
