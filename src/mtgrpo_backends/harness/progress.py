"""Progress of a long phase (a warm-up, a run, a comparison) on stderr, the same for every command.

On a terminal: a tqdm bar redrawn in place. Anywhere else (a pipe, a file, CI logs): plain lines, the first after
`first_s` seconds or at the first event that carries news (`force=True`, e.g. the warm-up's first probe), then at
most one every `every_s` seconds, plus a last one when the phase ends, so that a log gets readable lines and no
carriage-return redraws.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from typing import Any, TextIO

PLAIN_EVERY_S = 10.0  # seconds between plain progress lines


def interactive(stream: TextIO) -> bool:
    """Whether `stream` is a terminal (progress bars redraw there; elsewhere plain lines)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except (OSError, ValueError):  # a closed or detached stream
        return False


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class Progress:
    """`total` units of work named `desc`; update(n) after each n done. quiet: nothing at all; cap: `total` is
    only an upper bound."""

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        unit: str = "step",
        quiet: bool = False,
        stream: TextIO | None = None,
        every_s: float = PLAIN_EVERY_S,
        tty: bool | None = None,
        cap: bool = False,
        first_s: float | None = None,
    ) -> None:
        self.first_s = every_s if first_s is None else first_s  # the first plain line comes after this long
        self.cap = cap  # total is only an upper bound (a warm-up that stops early): no percentage or time left
        self.total, self.desc, self.unit, self.quiet, self.every_s = max(int(total), 0), desc, unit, quiet, every_s
        self.stream = stream if stream is not None else sys.stderr
        self.tty = interactive(self.stream) if tty is None else tty
        self.done, self.note = 0, ""
        self.started = time.perf_counter()
        self._last_line: float | None = None
        self._bar: Any = None
        if not quiet and self.tty and importlib.util.find_spec("tqdm") is not None:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, smoothing=0.05, file=self.stream, leave=False)

    def update(self, n: int = 1, note: str | None = None, force: bool = False) -> None:
        """n more units done; `note` replaces the text shown after the count; force: a plain line now."""
        self.done += n
        if note is not None:
            self.note = note
        if self.quiet:
            return
        if self._bar is not None:
            if note is not None:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.update(n)
            return
        now = time.perf_counter()
        since, wait = (self.started, self.first_s) if self._last_line is None else (self._last_line, self.every_s)
        if force or now - since >= wait:
            self._line(now)

    def set_done(self, done: int, note: str | None = None, force: bool = False) -> None:
        """Set the units done (e.g. a resumed run starts past 0)."""
        self.update(done - self.done, note, force)

    def write(self, text: str, file: TextIO | None = None) -> None:
        """A line of its own on stdout (e.g. an evaluation) without breaking the bar."""
        if self.quiet:
            return
        out = file if file is not None else sys.stdout
        if self._bar is not None:
            self._bar.write(text, file=out)
        else:
            print(text, file=out, flush=True)

    def close(self, final: bool = True) -> None:
        """End the phase: the bar disappears; in plain mode a last line (if final and anything was done)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif final and not self.quiet and self.done > 0 and self._last_line is not None:
            self._line(time.perf_counter())

    def text(self, now: float | None = None) -> str:
        """The plain progress line: `desc: done/total units (pct%), elapsed, about N s left, note`."""
        elapsed = (time.perf_counter() if now is None else now) - self.started
        if self.cap:
            parts = [f"{self.desc}: {self.done} {self.unit}s (at most {self.total})"]
        else:
            parts = [f"{self.desc}: {self.done}/{self.total} {self.unit}s"]
            if self.total > 0:
                parts[0] += f" ({100 * self.done / self.total:.0f}%)"
        parts.append(f"{_duration(elapsed)} elapsed")
        if not self.cap and 0 < self.done < self.total:
            parts.append(f"about {_duration(elapsed / self.done * (self.total - self.done))} left")
        if self.note:
            parts.append(self.note)
        return ", ".join(parts)

    def _line(self, now: float) -> None:
        self._last_line = now
        print(self.text(now), file=self.stream, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(final=exc[0] is None)
