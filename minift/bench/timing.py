"""Timing for the benchmarks: the best of a few runs after a warm-up, with the device waited for.

A GPU runs kernels asynchronously: a call returns once the launch is queued, long before the
work is done. A timing that reads the clock without waiting measures the launch, not the work,
so every timer here waits for the device first. On CuPy the kernel benchmarks use CUDA events,
stamped by the GPU itself in the stream's order, which leaves the host's clock out of it.

The first call is never timed: it compiles kernels (NVRTC, or g++ for the emulator), fills
allocator pools and creates optimizer state. The best run is kept because slower runs are
the same work plus interference (other processes, clock ramp-up), never less work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from backends.kernels.loader import CudaKernels


def no_sync() -> None:
    """Nothing to wait for: NumPy has returned when the work is done."""


def synchronizer(backend: Any) -> Callable[[], None]:
    """What waits for ``backend``'s device: its kernel set's ``synchronize``, or nothing."""
    kernels = getattr(backend, "kernels", None)
    return no_sync if kernels is None else kernels.synchronize


def best_ms(fn: Callable[[], object], repeat: int, sync: Callable[[], None] = no_sync) -> float:
    """Best wall-clock time of ``repeat`` calls of ``fn`` (after one warm-up call), in ms."""
    fn()
    sync()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return 1000 * best


def event_best_ms(fn: Callable[[], object], repeat: int, cupy: Any) -> float:
    """Best time of ``repeat`` calls measured by CUDA events around each, in ms."""
    fn()
    cupy.cuda.get_current_stream().synchronize()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    best = float("inf")
    for _ in range(repeat):
        start.record()
        fn()
        end.record()
        end.synchronize()
        best = min(best, cupy.cuda.get_elapsed_time(start, end))
    return best


def kernel_best_ms(ks: Any, fn: Callable[[], object], repeat: int) -> float:
    """Best time of ``fn`` on a kernel set: CUDA events on a GPU, the wall clock in the emulator."""
    if isinstance(ks, CudaKernels):
        return event_best_ms(fn, repeat, ks.xp)
    return best_ms(fn, repeat, ks.synchronize)


def device_name(ks: Any) -> str:
    """The GPU's name as CUDA reports it, "CPU emulator" for emulated kernels, "CPU" for none."""
    if ks is None:
        return "CPU"
    if not isinstance(ks, CudaKernels):
        return "CPU emulator"
    cupy = ks.xp
    name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def format_number(value: float | None) -> str:
    """A table cell: whole numbers from 10, two decimals below, two significant digits below 0.1
    (a GPU's short times, the emulator's tiny rates); "-" for a number not measured."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 10 else f"{value:.2f}" if value >= 0.1 else f"{value:.2g}"
