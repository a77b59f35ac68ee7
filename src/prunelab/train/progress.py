"""Progress of long work: a line per stage, on a terminal at once and in a log once the stage is long.

Library code marks its long stages (learning gates, ranking channels, fine-tuning) with
:func:`stage`; nothing is shown unless a caller turned reporting on with :func:`reporting`. The
command line does, for the commands that train or prune (unless ``--quiet``); the Python API and
study runs stay silent, so a study's live display and the logs of its workers are not interleaved
with per-run lines.

On a terminal each stage prints ``prunelab prune: ranking channels ...`` as it starts and the time it
took as it ends (the training loop's own tqdm bar shows the steps in between). When stderr is not a
terminal (a log file, CI), a stage prints one line only once it has run for ``after_s`` seconds, and
then its time at the end, so a long stage never leaves a log silent and short ones add nothing.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO

#: seconds a stage runs before a log (stderr not a terminal) gets a line for it
LOG_AFTER_S = 5.0


class _Reporter:
    def __init__(self, prefix: str, stream: TextIO, tty: bool, after_s: float) -> None:
        self.prefix, self.stream, self.tty, self.after_s = prefix, stream, tty, after_s
        self.lock = threading.Lock()

    def write(self, text: str) -> None:
        with self.lock:
            self.stream.write(f"{self.prefix}: {text}\n")
            self.stream.flush()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        shown = threading.Event()

        def announce() -> None:
            shown.set()
            self.write(f"{name} ..." if self.tty else f"{name} (running for {time.perf_counter() - start:.0f} s)")

        timer = None
        if self.tty:
            announce()
        else:
            timer = threading.Timer(self.after_s, announce)
            timer.daemon = True
            timer.start()
        try:
            yield
        finally:
            if timer is not None:
                timer.cancel()
            if shown.is_set():
                self.write(f"{name}: done in {time.perf_counter() - start:.1f} s")


_ACTIVE: _Reporter | None = None


@contextlib.contextmanager
def reporting(prefix: str, *, enabled: bool = True, stream: TextIO | None = None, tty: bool | None = None,
              after_s: float | None = None) -> Iterator[None]:
    """Show the :func:`stage` lines of the work inside the block on ``stream`` (default stderr), each
    prefixed with ``prefix`` (e.g. ``"prunelab prune"``). ``tty`` defaults to whether the stream is a
    terminal; ``after_s`` to :data:`LOG_AFTER_S`. With ``enabled=False`` the block stays silent."""
    global _ACTIVE
    if not enabled:
        yield
        return
    stream = stream or sys.stderr
    previous = _ACTIVE
    _ACTIVE = _Reporter(prefix, stream, stream.isatty() if tty is None else tty,
                        LOG_AFTER_S if after_s is None else after_s)
    try:
        yield
    finally:
        _ACTIVE = previous


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Mark the work inside the block as the stage ``name`` (see module doc); silent unless reporting."""
    reporter = _ACTIVE
    if reporter is None:
        yield
        return
    with reporter.stage(name):
        yield


def stderr_is_terminal() -> bool:
    """Whether progress drawn on stderr reaches a person (a terminal), not a log."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
