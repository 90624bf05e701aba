"""Ctrl-C and SIGTERM: finish the current step, save a checkpoint, exit cleanly."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


class Interrupted(Exception):
    """Raised at a safe point after SIGINT/SIGTERM; the exit code is 128 + the signal number."""

    def __init__(self, signum: int):
        self.signum = signum
        self.saved: str | None = None  # what the run had checkpointed when it stopped, if anything
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


class StopFlag:
    """Remembers a SIGINT/SIGTERM instead of dying mid-write; loops call :meth:`check`.

    Used as ``with StopFlag() as stop:``; on leaving, the handlers that were there before are
    back, so a caller that runs edits in-process (a benchmark's worker, a notebook) can still be
    stopped by SIGTERM afterwards. Ctrl-C a second time stops at once (the default handler); any
    other signal after the first changes nothing, since the run is stopping: the launcher's end can
    send SIGTERM twice (:func:`stop_with_launcher`: once per launcher thread the run is handed to).
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
        if self.requested == signal.SIGINT and signum == signal.SIGINT:  # Ctrl-C twice: stop at once
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        if self.requested is None:  # any other signal after the first changes nothing: the run is stopping
            self.requested = signum

    def check(self) -> None:
        if self.requested is not None:
            raise Interrupted(self.requested)


def launched_by_accelerate(pid: int | None = None) -> bool:
    """Whether the parent of this process (or of ``pid``) is an ``accelerate launch`` process."""
    try:
        ppid = os.getppid() if pid is None else int(Path(f"/proc/{pid}/stat").read_text().split()[3])
        words = Path(f"/proc/{ppid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return False
    # `accelerate launch ...` or `python -m accelerate.commands.launch ...`
    return b"launch" in words or any(w.endswith(b"accelerate.commands.launch") for w in words) and any(
        b"accelerate" in w for w in words)


def stop_with_launcher() -> None:
    """Under ``accelerate launch`` (Linux): have the kernel send this process SIGTERM when the launcher
    dies. accelerate's launcher does not pass a SIGTERM on to the run it started; without this, a
    scheduler's or a user's ``kill`` of the launcher orphans the run, which then trains on and
    commits its artifact. With it, the run stops as a direct SIGTERM stops it (checkpoint, exit 143)."""
    if not sys.platform.startswith("linux") or not launched_by_accelerate():
        return
    import ctypes

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
