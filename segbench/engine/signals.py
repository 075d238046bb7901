"""SIGINT / SIGTERM during a run: finish the current training step, write a checkpoint, then stop."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

STOP_SIGNALS = ("SIGINT", "SIGTERM")


class StopRequest:
    """Set by the signal handler; the training loop polls :attr:`requested` at each step boundary.

    While :attr:`deferred` is true (inside the training loop) the first signal
    only sets the request; outside it, or on a second signal, the handler
    raises ``KeyboardInterrupt`` at once (evaluation, data setup).
    """

    def __init__(self) -> None:
        self.signal: str | None = None
        self.deferred = False

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def handle(self, signum: int, frame=None) -> None:
        first = self.signal is None
        self.signal = signal.Signals(signum).name
        if not (self.deferred and first):
            raise KeyboardInterrupt(f"stopped by {self.signal}")


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Install :class:`StopRequest` handlers for SIGINT and SIGTERM (main thread only); restore the old ones after."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {}
    for name in STOP_SIGNALS:
        number = getattr(signal, name, None)
        if number is not None:
            previous[number] = signal.signal(number, stop.handle)
    try:
        yield stop
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
