"""A progress bar on stderr (one line per step when stderr is not a terminal)."""

from __future__ import annotations

import sys
import time


class Progress:
    WIDTH = 28

    def __init__(self, total: int, stream=None) -> None:
        self.total = max(1, total)
        self.done = 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self.label = ""

    def _elapsed(self) -> str:
        s = int(time.monotonic() - self.started)
        return f"{s // 60}:{s % 60:02d}"

    def _draw(self, extra: str = "") -> None:
        filled = self.WIDTH * self.done // self.total
        bar = "#" * filled + "." * (self.WIDTH - filled)
        text = f"[{bar}] {self.done}/{self.total} {self._elapsed()} {self.label}{extra}"
        if self.tty:
            self.stream.write("\r\x1b[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def start(self, label: str) -> None:
        self.label = label
        self._draw()

    def tick(self) -> None:
        """A sign of life inside a long step (terminals only)."""
        if self.tty:
            self._draw(" .")

    def step(self, result: str = "") -> None:
        self.done += 1
        if self.tty:
            if result:
                self.stream.write("\r\x1b[K" + f"  {self.label}: {result}\n")
            self._draw()
        elif result:
            self.stream.write(f"  {self.label}: {result}\n")
            self.stream.flush()

    def note(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K" + text + "\n")
            self._draw()
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
        self.stream.write(f"done in {self._elapsed()}\n")
        self.stream.flush()
