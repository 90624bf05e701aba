"""Ctrl-C and SIGTERM: finish the current step, save a checkpoint, exit cleanly."""

from __future__ import annotations

import signal


class Interrupted(Exception):
    """Raised at a safe point after SIGINT/SIGTERM; the exit code is 128 + the signal number."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


class StopFlag:
    """Remembers a SIGINT/SIGTERM instead of dying mid-write; loops call :meth:`check`.

    A second Ctrl-C while the first is being handled stops at once (the default handler).
    """

    def __init__(self):
        self.requested: int | None = None

    def install(self) -> "StopFlag":
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested is not None:
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        self.requested = signum

    def check(self) -> None:
        if self.requested is not None:
            raise Interrupted(self.requested)
