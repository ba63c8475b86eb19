"""A dependency-free progress bar for long runs (simulate, loopback, reproduce), drawn on stderr.

It redraws in place on a terminal and prints a line every 10% otherwise (CI logs stay short).
"""
from __future__ import annotations

import sys
import time


class ProgressBar:
    """``bar = ProgressBar(total, "simulate"); bar.update(done[, total, note]); bar.close()``.

    ``update`` has the (done, total) signature of every progress callback here, so pass it directly.
    """

    def __init__(self, total: int, label: str, stream=None, enabled: bool = True) -> None:
        self.total, self.label = max(int(total), 1), label
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self._last_decile = -1

    def update(self, done: int, total: int | None = None, note: str = "") -> None:
        if total is not None:
            self.total = max(int(total), 1)
        if not self.enabled:
            return
        frac = min(max(done / self.total, 0.0), 1.0)
        elapsed = time.perf_counter() - self.start
        eta = f"{elapsed / frac - elapsed:5.1f}s" if frac > 0 else "    ?"
        filled = int(30 * frac)
        line = (f"{self.label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total} "
                f"{elapsed:5.1f}s eta {eta} {note}")
        if self.tty:
            self.stream.write("\r" + line[:120].ljust(120))
            self.stream.flush()
        elif int(frac * 10) > self._last_decile:
            self._last_decile = int(frac * 10)
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
