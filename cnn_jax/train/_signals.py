"""SIGINT, SIGTERM and SIGHUP as a flag, for the training loop and the ``cnn-jax`` command.

No jax here: the command installs the guard before it imports anything heavy, so a
Ctrl-C in the first seconds (while jax loads) is a clean exit, not a
``KeyboardInterrupt`` raised inside an import or a C++ callback.
"""

from __future__ import annotations

import signal
import sys
import threading

_ACTIVE: list = []  # the guard whose handlers are installed, if any


class SignalGuard:
    """Within ``with SignalGuard() as guard:``, SIGINT, SIGTERM and SIGHUP set ``guard.signal``.

    SIGHUP (a closed terminal, and how many schedulers stop a job) is a stop like
    SIGTERM: the run saves and exits 129, resumable.

    The loop polls :attr:`stop` between steps. A signal that arrives while a
    checkpoint is being written (``guard.saving = True``) is reported and otherwise
    ignored: the write finishes, atomically, and the run then exits. Guards nest: an
    inner ``with SignalGuard()`` returns the guard already installed (the command's),
    so a signal that arrived before training started is seen by the loop. Outside
    the main thread (where Python cannot install handlers) it does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.signal: int | None = None
        self.saving = False
        self._previous: dict = {}

    @property
    def stop(self) -> bool:
        """Whether a signal has arrived."""
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else ""

    def _handle(self, signum, frame):
        if self.saving or self.signal is not None:
            print(
                f"\n{signal.Signals(signum).name}: writing the checkpoint; it finishes "
                "first (it is never left half-written)",
                file=sys.stderr,
                flush=True,
            )
        if self.signal is None:
            self.signal = signum

    def __enter__(self) -> SignalGuard:
        if _ACTIVE:
            return _ACTIVE[-1]
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
            _ACTIVE.append(self)
        return self

    def __exit__(self, *exc):
        if self._previous:
            for s, handler in self._previous.items():
                signal.signal(s, handler)
            self._previous.clear()
            _ACTIVE.remove(self)
        return False


def active_guard() -> SignalGuard | None:
    """The installed guard, or None."""
    return _ACTIVE[-1] if _ACTIVE else None
