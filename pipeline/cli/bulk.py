"""The brakes on bulk CLI actions (replay, purge): a selection, a look first, a pace, progress."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from pipeline.cli.output import fail, stderr
from pipeline.durations import parse_rate as rate_per_second


def interactive() -> bool:
    """True when a person is there to answer a question (stdin and stderr are terminals)."""
    return sys.stdin.isatty() and sys.stderr.isatty()


def require_selection(has_ids: bool, every: bool, filtered: bool) -> None:
    """Fails unless exactly one way of choosing rows was given (ids, or filters and/or --all)."""
    if has_ids and (every or filtered):
        fail("give either --id N (repeatable) or filters / --all, not both")
    if not (has_ids or every or filtered):
        fail(
            "say which dead letters: --id N (repeatable), a filter (--channel, --reason, "
            "--alert, --since), or --all --yes for every one"
        )


def confirm(verb: str, summary: Callable[[], str | None], *, unbounded: bool) -> None:
    """Asks on a terminal before a bulk change; without one, an unbounded change is refused.

    summary is called only when there is someone to show it to; None means nothing matches.
    """
    if not interactive():
        if unbounded:
            fail(f"--all without a filter would {verb} every dead letter: add --yes to confirm")
        return
    shown = summary()
    if shown is None:
        return
    stderr.print(shown, highlight=False, markup=False)
    if not typer.confirm(f"{verb.capitalize()} them?", default=False, err=True):
        fail(f"{verb} cancelled", 1)


def parse_rate(text: str) -> float:
    """Returns rows per second from "5/s", "300/m" or "5"; fails with one line otherwise."""
    try:
        return rate_per_second(text)
    except ValueError as exc:
        fail(f"--{exc}")
        raise


@contextmanager
def progress(description: str) -> Iterator[Callable[[int, int], None] | None]:
    """Yields a (done, total) callback drawing a progress bar on a terminal, else None."""
    if not sys.stderr.isatty():
        yield None
        return
    bar = Progress(
        TextColumn(description), BarColumn(), MofNCompleteColumn(), console=stderr, transient=True
    )
    with bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update
