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
def timed(timings: dict[str, float], name: str, device=None):
    """Add the wall time of the block (device work included) to ``timings[name]``, in seconds."""
    synchronize(device)
    start = time.perf_counter()
    try:
        yield
    finally:
        synchronize(device)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


def reset_peak_memory(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device) -> dict[str, float]:
    """Peak GPU memory allocated/reserved (GiB) on CUDA; the process's peak RSS (GiB) always."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_gib = rss / (1024 ** 3 if sys.platform == "darwin" else 1024 ** 2)
    out = {"peak_rss_gib": round(rss_gib, 3)}
    if torch.device(device).type == "cuda":
        out["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 1024 ** 3, 3)
        out["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 1024 ** 3, 3)
    return out
