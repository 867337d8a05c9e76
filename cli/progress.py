"""Progress of an embedded job per stage: bars on a terminal, plain lines when stderr is not one.

`stage_progress` yields the callback `workers.embedded.run_embedded` calls with the job's counters
after each task. On a terminal it draws one rich bar per stage; in a log or a pipe it prints a
line when a stage finishes, and otherwise at most one every PLAIN_EVERY_S seconds.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

STAGES = ("samples", "scored", "pairs", "trained_steps")
PLAIN_EVERY_S = 10.0

ProgressFn = Callable[[dict[str, int], dict[str, int]], None]


def _label(stage: str) -> str:
    return stage.replace("_", " ")


def progress_line(counts: dict[str, int], totals: dict[str, int]) -> str:
    """`progress: samples 8/16 · scored 4/16 · pairs 0/8 · trained steps 0` (no total: not known yet)."""
    parts = [f"{_label(s)} {counts.get(s, 0)}" + (f"/{totals[s]}" if totals.get(s) else "") for s in STAGES]
    return "progress: " + " · ".join(parts)


class PlainProgress:
    """Lines for logs: one when a stage reaches its total, else one per `every_s` at most."""

    def __init__(self, stream: TextIO, every_s: float = PLAIN_EVERY_S, clock: Callable[[], float] = time.monotonic):
        self.stream, self.every_s, self.clock = stream, every_s, clock
        self.last_at: float | None = None
        self.finished: set[str] = set()

    def __call__(self, counts: dict[str, int], totals: dict[str, int]) -> None:
        done = {s for s in STAGES if totals.get(s) and counts.get(s, 0) >= totals[s]}
        now = self.clock()
        if done - self.finished or self.last_at is None or now - self.last_at >= self.every_s:
            print(progress_line(counts, totals), file=self.stream, flush=True)
            self.last_at = now
        self.finished |= done


@contextmanager
def stage_progress(enabled: bool = True, stream: TextIO | None = None) -> Iterator[ProgressFn | None]:
    """The progress callback for this console: rich bars on a terminal, PlainProgress otherwise,
    None when disabled (`--no-progress`)."""
    stream = stream or sys.stderr
    if not enabled:
        yield None
        return
    if not stream.isatty():
        yield PlainProgress(stream)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description:>13}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(file=stream)) as bars:
        ids: dict[str, TaskID] = {}

        def update(counts: dict[str, int], totals: dict[str, int]) -> None:
            for name in STAGES:
                if name not in ids:
                    ids[name] = bars.add_task(_label(name), total=totals.get(name) or None)
                bars.update(ids[name], completed=counts.get(name, 0))

        with _logs_above_bars(stream):
            yield update


@contextmanager
def _logs_above_bars(stream: TextIO) -> Iterator[None]:
    """Log lines written to `stream` while the bars are drawn go through rich's stand-in for
    sys.stderr, which prints them above the bars instead of into them."""
    handlers = [h for h in logging.getLogger().handlers if type(h) is logging.StreamHandler and h.stream is stream]
    for h in handlers:
        h.setStream(sys.stderr)
    try:
        yield
    finally:
        for h in handlers:
            h.setStream(stream)
