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

    Used as ``with StopFlag() as stop:``; on leaving, the handlers that were there before are
    back, so a caller that runs edits in-process (a benchmark's worker, a notebook) can still be
    stopped by SIGTERM afterwards. A second Ctrl-C while the first is being handled stops at once
    (the default handler).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopFlag":
        self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested is not None:
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        self.requested = signum

    def check(self) -> None:
        if self.requested is not None:
            raise Interrupted(self.requested)
