"""Progress bars: tqdm with an ETA on a terminal; a few plain lines where output is not one.

Every long loop takes `tqdm(..., disable=not progress)` from here instead of from tqdm itself.
On a terminal this is tqdm's own bar. Anywhere else (CI logs, a pipe, a notebook's captured
stderr) redrawing one line with carriage returns makes a mess, so the bar prints a whole line at
the start, at every quarter and at the end, each with tqdm's counts, elapsed time and ETA.
`--quiet` / `--no-progress` (progress=False) silence both.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

from tqdm.std import tqdm as _tqdm

QUARTERS = 4
# The plain lines: counts, elapsed time, ETA and rate; no bar drawn.
KNOWN = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [elapsed {elapsed}, ETA {remaining}, {rate_fmt}{postfix}]"
UNKNOWN = "{desc}: {n_fmt} [elapsed {elapsed}, {rate_fmt}{postfix}]"


class PlainLines(_tqdm):
    """tqdm that writes whole lines at 0%, every quarter and 100% instead of redrawing one."""

    def __init__(self, *args, **kwargs):
        self._next_fraction = 0.0
        self._printed_n = None
        kwargs.update(mininterval=0, miniters=1, leave=False, dynamic_ncols=False, ascii=True)
        iterable = args[0] if args else kwargs.get("iterable")
        known = kwargs.get("total") is not None or hasattr(iterable, "__len__")
        kwargs.setdefault("bar_format", KNOWN if known else UNKNOWN)
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):
        if msg == "":  # close(): the last line, unless it is already out
            if self._printed_n != self.n:
                self._line()
            return False
        total = self.total
        fraction = self.n / total if total else 0.0
        if self._printed_n is None or (total and fraction >= self._next_fraction):
            self._line()
            self._next_fraction = (int(fraction * QUARTERS) + 1) / QUARTERS
        return True

    def _line(self) -> None:
        self.fp.write(self.format_meter(**self.format_dict) + "\n")
        self.fp.flush()
        self._printed_n = self.n


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def tqdm(*args, **kwargs):
    """A progress bar for a terminal, or PlainLines where stderr (or `file`) is not one."""
    stream = kwargs.get("file") or sys.stderr
    if _is_terminal(stream):
        from tqdm.auto import tqdm as terminal

        return terminal(*args, **kwargs)
    return PlainLines(*args, **kwargs)


@contextmanager
def library_bars(enabled: bool):
    """transformers' own bars (loading weights) follow ours for the block: shown only on a
    terminal and unless progress is off (they redraw with carriage returns)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if not (enabled and _is_terminal(sys.stderr)):
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()
