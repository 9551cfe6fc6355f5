"""How a long run stops early: Ctrl-C, or a remote run that kept failing. Either way the caller
gets the finished part back, marked unfinished and saying why."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from .errors import RemoteFailure


@dataclass
class Stop:
    reason: str = ""

    @property
    def finished(self) -> bool:
        return not self.reason

    def mark(self, ds):
        """Set attrs['completed'] (and attrs['stopped_by'] for an unfinished run) on `ds`."""
        ds.attrs["completed"] = int(self.finished)
        if self.reason:
            ds.attrs["stopped_by"] = self.reason
        return ds


@contextmanager
def stoppable():
    """Run a block whose Ctrl-C or persistent remote failure ends it early instead of raising."""
    stop = Stop()
    try:
        yield stop
    except KeyboardInterrupt:
        stop.reason = "interrupted (Ctrl-C)"
    except RemoteFailure as exc:
        stop.reason = str(exc)
