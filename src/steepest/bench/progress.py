"""A dependency-free progress display for training runs, written to stderr.

On a terminal it redraws one line in place (``\\r``) with a bar, the step count, the latest loss and
the elapsed time. When the stream is not a terminal (a log file, CI, a pipe) it prints a plain line
at most every ``line_every`` steps plus the final one, so logs stay short and readable.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO


def format_seconds(seconds: float) -> str:
    """``75.3`` -> ``"1:15"``; ``3725`` -> ``"1:02:05"``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Progress of one named run of ``total`` steps.

    Call :meth:`update` after each step and :meth:`close` at the end. ``val_loss`` shown when given.
    """

    def __init__(self, name: str, total: int, stream: TextIO | None = None, width: int = 24,
                 line_every: int | None = None, enabled: bool = True) -> None:
        self.name = name
        self.total = max(1, int(total))
        self.stream = sys.stderr if stream is None else stream
        self.width = width
        self.enabled = enabled
        self.is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.line_every = line_every or max(1, self.total // 10)
        self.start = time.perf_counter()
        self._last_len = 0
        self._last_step = 0

    def render(self, step: int, loss: float | None = None, val_loss: float | None = None) -> str:
        """The status text for ``step`` (without any carriage return)."""
        done = min(self.total, max(0, step))
        filled = int(self.width * done / self.total)
        bar = "#" * filled + "-" * (self.width - filled)
        parts = [f"{self.name:>14} [{bar}] {done}/{self.total}"]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if val_loss is not None:
            parts.append(f"val {val_loss:.4f}")
        parts.append(format_seconds(time.perf_counter() - self.start))
        return "  ".join(parts)

    def update(self, step: int, loss: float | None = None, val_loss: float | None = None) -> None:
        """Show progress after ``step`` steps."""
        self._last_step = step
        if not self.enabled:
            return
        text = self.render(step, loss, val_loss)
        if self.is_tty:
            pad = " " * max(0, self._last_len - len(text))
            self.stream.write("\r" + text + pad)
            self._last_len = len(text)
        elif step % self.line_every == 0 or step >= self.total:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self, message: str | None = None) -> None:
        """Finish the line (terminal) and optionally print ``message`` on its own line."""
        if not self.enabled:
            return
        if self.is_tty and self._last_len:
            self.stream.write("\n")
        if message:
            self.stream.write(message + "\n")
        self.stream.flush()
