"""Progress on stderr: tqdm's bar on a terminal, plain lines everywhere else.

A bar redraws itself with carriage returns and, when bars are nested, cursor-up codes. In a log file or a
pipe those pile up into one unreadable line, so there `progress_bar` prints a whole line instead: every
LOG_INTERVAL seconds while it runs and once at the end, e.g.

    out.mp4: 480/1250 frame (38%), 6.1 frame/s, 01:18 elapsed

`progress_bar` takes tqdm's arguments (those fom uses) and returns an object with tqdm's interface:
iterate over it or call update(), set_postfix(), reset() and close(), or use it in a with-block.
"""

import sys
import time

from tqdm import tqdm

# Seconds between two lines in a log: often enough to see a long run move, rare enough to stay readable.
LOG_INTERVAL = 15.0


def is_terminal(file) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def progress_bar(iterable=None, file=None, **kwargs):
    """tqdm(iterable, file=file, **kwargs) when `file` (default stderr) is a terminal, else PlainProgress."""
    file = sys.stderr if file is None else file
    if is_terminal(file):
        return tqdm(iterable, file=file, **kwargs)
    return PlainProgress(iterable, file=file, **kwargs)


class PlainProgress:
    """tqdm's interface, written as plain lines: one every `interval` seconds and one when closed."""

    def __init__(self, iterable=None, desc=None, total=None, unit="it", unit_scale=False, unit_divisor=1000,
                 disable=False, file=None, interval=LOG_INTERVAL, **bar_options):
        # bar_options (leave, dynamic_ncols, ...) shape how a bar is drawn, which a line does not need.
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.desc, self.total, self.unit = desc, total, unit
        self.unit_scale, self.unit_divisor = unit_scale, unit_divisor
        self.disable = disable
        self.file = sys.stderr if file is None else file
        self.interval = interval
        self.n = 0
        self.postfix = ""
        self.started = self.last_line = time.monotonic()

    def __iter__(self):
        if self.iterable is None:
            raise TypeError("PlainProgress() was given no iterable")
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False

    def update(self, n=1):
        self.n += n
        now = time.monotonic()
        if not self.disable and now - self.last_line >= self.interval:
            self.last_line = now
            self._print_line(now)

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        values = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def reset(self, total=None):
        self.n, self.total = 0, total
        self.started = self.last_line = time.monotonic()

    def close(self):
        if not self.disable:
            self.disable = True  # once: iteration and a with-block may both close it
            self._print_line(time.monotonic())

    def _count(self, value):
        if self.unit_scale:
            return tqdm.format_sizeof(value, divisor=self.unit_divisor)
        return str(value)

    def _print_line(self, now):
        elapsed = now - self.started
        done = self._count(self.n) + (f"/{self._count(self.total)}" if self.total is not None else "")
        space = "" if self.unit_scale else " "  # 12.0M/48.0MB as tqdm writes it, but 40/100 frames
        parts = [f"{done}{space}{self.unit}" + (f" ({100 * self.n / self.total:.0f}%)" if self.total else "")]
        if elapsed > 0 and self.n:
            parts.append(f"{self._count(round(self.n / elapsed, 1))}{space}{self.unit}/s")
        parts.append(f"{tqdm.format_interval(elapsed)} elapsed")
        if self.postfix:
            parts.append(self.postfix)
        prefix = f"{self.desc}: " if self.desc else ""
        print(prefix + ", ".join(parts), file=self.file, flush=True)
