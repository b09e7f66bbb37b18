"""Everything the user sees. The only module that knows rich.

API functions take a `Printer`; the CLI passes a `RichPrinter`, notebooks and tests may pass
the plain `Printer` (plain text to stderr) or `Printer(quiet=True)`.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any


class Bar:
    """A progress handle: `advance(n)` and `set(description)`."""

    def advance(self, n: int = 1) -> None:  # pragma: no cover - trivial
        pass

    def set(self, description: str) -> None:  # pragma: no cover - trivial
        pass


class Printer:
    """Plain-text output to stderr; progress bars are silent."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.warnings: list[str] = []

    def _out(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr)

    def info(self, text: str) -> None:
        self._out(text)

    def note(self, text: str) -> None:
        self._out(f"note: {text}")

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        self._out(f"warning: {text}")

    def table(self, title: str, rows: Sequence[tuple[str, Any]]) -> None:
        if self.quiet:
            return
        self._out(title)
        for k, v in rows:
            self._out(f"  {k}: {v}")

    def grid(self, title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A table with a header row (final results: shown even with --quiet, like `table`)."""
        print(title, file=sys.stderr)
        for r in [header, *rows]:
            print("  " + " | ".join(str(c) for c in r), file=sys.stderr)

    @contextlib.contextmanager
    def progress(self, total: int | None, description: str) -> Iterator[Bar]:
        yield Bar()


class _RichBar(Bar):
    def __init__(self, progress: Any, task: Any):
        self._p, self._t = progress, task

    def advance(self, n: int = 1) -> None:
        self._p.advance(self._t, n)

    def set(self, description: str) -> None:
        self._p.update(self._t, description=description)


class RichPrinter(Printer):
    """rich output to stderr (stdout stays clean for --json)."""

    def __init__(self, quiet: bool = False):
        super().__init__(quiet)
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False, soft_wrap=True)

    def info(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, markup=False)

    def note(self, text: str) -> None:
        if not self.quiet:
            self.console.print(f"[cyan]note:[/cyan] {_escape(text)}")

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        if not self.quiet:
            self.console.print(f"[yellow]warning:[/yellow] {_escape(text)}")

    def error(self, text: str) -> None:
        self.console.print(f"[red]error:[/red] {_escape(text)}")

    def table(self, title: str, rows: Sequence[tuple[str, Any]]) -> None:
        # final results: shown even with --quiet
        from rich.table import Table

        t = Table(title=title, show_header=False, title_justify="left")
        t.add_column(style="bold")
        t.add_column()
        for k, v in rows:
            t.add_row(_escape(str(k)), _escape(str(v)))
        self.console.print(t)

    def grid(self, title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        from rich.table import Table

        t = Table(title=title, title_justify="left")
        for h in header:
            t.add_column(_escape(str(h)))
        for r in rows:
            t.add_row(*(_escape(str(c)) for c in r))
        self.console.print(t)

    @contextlib.contextmanager
    def progress(self, total: int | None, description: str) -> Iterator[Bar]:
        if self.quiet:
            yield Bar()
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        ) as p:
            task = p.add_task(description, total=total)
            yield _RichBar(p, task)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
