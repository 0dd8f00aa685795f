"""A progress bar on stderr for long CLI runs: redrawn in place on a terminal, a line per tenth
otherwise (so CI logs stay short)."""

from __future__ import annotations

import sys
from typing import TextIO

WIDTH = 30


class Progress:
    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self.total = max(total, 1)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self._tty = self.stream.isatty()
        self._last_tenth = -1

    def update(self, done: int, note: str = "") -> None:
        filled = WIDTH * done // self.total
        line = f"{self.label} [{'#' * filled}{'.' * (WIDTH - filled)}] {done}/{self.total} {note}".rstrip()
        if self._tty:
            self.stream.write("\r" + line)
            if done >= self.total:
                self.stream.write("\n")
        else:
            tenth = 10 * done // self.total
            if tenth == self._last_tenth:
                return
            self._last_tenth = tenth
            self.stream.write(line + "\n")
        self.stream.flush()
