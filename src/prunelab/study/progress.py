"""The live progress line of ``prunelab study run``: runs done / running / failed and the current epoch.

Drawn with tqdm on stderr when it is a terminal; silent otherwise (logs and CI stay clean).
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class ProgressDisplay:
    """A tqdm bar over the study's runs, with the live runs' epochs in its postfix."""

    def __init__(self, name: str, total: int, done: int, enabled: bool | None = None, stream: TextIO | None = None):
        stream = stream or sys.stderr
        self.enabled = stream.isatty() if enabled is None else enabled
        self._bar = None
        self._last = 0.0
        if self.enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=done, desc=name, unit="run", file=stream, dynamic_ncols=True,
                             leave=True)

    def update(self, counts: dict[str, int], live: dict[str, tuple[str, dict[str, Any]]], force: bool = False) -> None:
        """``counts`` by status; ``live`` maps run ids this runner executes to (label, progress info)."""
        if self._bar is None or (not force and time.monotonic() - self._last < 0.2):
            return
        self._last = time.monotonic()
        self._bar.n = counts.get("done", 0) + counts.get("failed", 0)
        parts = [f"running {counts.get('running', 0)}", f"failed {counts.get('failed', 0)}"]
        for label, info in list(live.values())[:2]:
            text = label
            if "epoch" in info:
                text += f" {info.get('phase', 'epoch')} {info['epoch']}/{info.get('epochs', '?')}"
            elif "phase" in info:
                text += f" {info['phase']}"
            parts.append(text)
        self._bar.set_postfix_str(" | ".join(parts), refresh=False)
        self._bar.refresh()

    def write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
