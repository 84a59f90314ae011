"""Progress bars and one-line messages on stderr, silenced together by `quiet`."""

from __future__ import annotations

import contextlib
import time

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
HEARTBEAT = 30.0  # seconds between the progress lines of a stage when the output is not a terminal
QUIET_UNDER = 3.0  # a stage shorter than this ends without a line of its own


class Reporter:
    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def say(self, message: str) -> None:
        if not self.quiet:
            _console.print(message, markup=False)

    @contextlib.contextmanager
    def bar(self, description: str, total: int):
        """Yields `advance(n)`: a bar on a terminal; elsewhere (a log file, a pipe, CI) plain lines, so no
        stage over a few seconds is silent; nothing when quiet."""
        if self.quiet or total <= 0:
            yield lambda n=1, **fields: None
            return
        if not _console.is_terminal:
            with self._lines(description, total) as advance:
                yield advance
            return
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
        with Progress(*columns, console=_console) as p:
            task = p.add_task(description, total=total, info="")

            def advance(n: int = 1, info: str = "") -> None:
                p.update(task, advance=n, info=info)

            yield advance

    @contextlib.contextmanager
    def _lines(self, description: str, total: int, clock=time.monotonic):
        """The bar as lines: one when the stage starts, one every HEARTBEAT seconds with the count done,
        one at the end with the time taken (left out for a stage under QUIET_UNDER seconds)."""
        started = clock()
        state = {"done": 0, "next": started + HEARTBEAT}
        self.say(f"{description}: {total:,} to do ...")

        def advance(n: int = 1, info: str = "") -> None:
            state["done"] += n
            now = clock()
            if now >= state["next"]:
                state["next"] = now + HEARTBEAT
                self.say(f"{description}: {state['done']:,} of {total:,} after {now - started:.0f} s"
                         + (f" ({info})" if info else ""))

        yield advance
        took = clock() - started
        if took >= QUIET_UNDER:
            self.say(f"{description}: {state['done']:,} of {total:,} done in {took:.0f} s.")
