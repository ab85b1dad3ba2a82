"""Progress of long work: a tqdm bar on a terminal, a few plain lines in a log.

A tqdm bar redraws itself with carriage returns; written to a file (``make demo
> log``, CI) that becomes one line of thousands of updates. When stderr is not
a terminal, :func:`progress` prints a plain line at every tenth of the work
instead (and at the end), which a log reader can follow.
"""

from __future__ import annotations

import sys
import time


def progress(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it",
             enabled: bool = True, leave: bool = False, stream=None, steps: int = 10):
    """tqdm's interface (iteration, ``update``, ``set_postfix``, ``close``) for both cases;
    ``steps`` lines over the whole work when stderr is not a terminal."""
    stream = sys.stderr if stream is None else stream
    if enabled and _is_terminal(stream):
        from tqdm.auto import tqdm
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=stream)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, enabled=enabled,
                        stream=stream, steps=steps)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class LineProgress:
    """A line per tenth of the work: ``desc: 40% (400/1000 img, 12.1 s) loss=0.61``."""

    def __init__(self, iterable=None, total: int | None = None, desc: str = "",
                 unit: str = "it", enabled: bool = True, stream=None, steps: int = 10):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit = total, desc, unit
        self.enabled, self.stream, self.steps = enabled, stream or sys.stderr, steps
        self.n = 0
        self.postfix = ""
        self._next_step = 1
        self._start = time.perf_counter()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.enabled or not self.total:
            return
        if self._next_step <= self.steps and self.n * self.steps >= self._next_step * self.total:
            self._next_step = min(self.n, self.total) * self.steps // self.total + 1
            self._line()          # one line, however many tenths this update crossed

    def set_postfix(self, **values) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def _line(self) -> None:
        pct = 100 * self.n / self.total
        text = (f"{self.desc}: {pct:3.0f}% ({self.n}/{self.total} {self.unit}, "
                f"{time.perf_counter() - self._start:.1f} s)")
        print(text + (f" {self.postfix}" if self.postfix else ""), file=self.stream, flush=True)

    def close(self) -> None:
        pass
