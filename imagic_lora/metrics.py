"""Wall time per phase and peak memory, measured the same way on every device."""

from __future__ import annotations

import resource
import sys
import time
from contextlib import contextmanager

import torch


def synchronize(device: torch.device | str | None = None) -> None:
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


@contextmanager
def timed(timings: dict[str, float], name: str, device=None, memory: dict | None = None):
    """Add the wall time of the block (device work included) to ``timings[name]``, in seconds;
    on CUDA, with ``memory`` given, record the block's own peak allocated/reserved GiB there."""
    cuda = memory is not None and device is not None and torch.device(device).type == "cuda"
    synchronize(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        yield
    finally:
        synchronize(device)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
        if cuda:
            memory[name] = {"peak_allocated_gib": round(torch.cuda.max_memory_allocated(device) / 1024 ** 3, 3),
                            "peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / 1024 ** 3, 3)}


def peak_memory(phase_memory: dict[str, dict] | None = None) -> dict[str, float]:
    """The process's peak RSS (GiB), and on CUDA the largest per-phase peaks of :func:`timed`."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_gib = rss / (1024 ** 3 if sys.platform == "darwin" else 1024 ** 2)
    out = {"peak_rss_gib": round(rss_gib, 3)}
    for key in ("peak_allocated_gib", "peak_reserved_gib"):
        values = [phase[key] for phase in (phase_memory or {}).values() if key in phase]
        if values:
            out[key] = max(values)
    return out
