"""Measuring for the benchmark: interleaved repetitions, their median and range, and peak memory.

The two sides of a comparison run interleaved (A, B, A, B, ...) after a warm-up, so load on a
shared machine hits both alike; a result is the median and [min-max] of the repetitions.
"""
import resource
import statistics
import time

import torch

from runlog import Progress

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = [time.perf_counter]


def set_clock(name: str) -> None:
    """wall: elapsed time; cpu: this process's CPU time -- on cores shared with other jobs, one
    torch thread's CPU time hardly moves with their load, where wall time does (several-fold).
    It leaves out child processes (the sandbox's code runs)."""
    _clock[0] = CLOCKS[name]


def now() -> float:
    return _clock[0]()


def peak_memory_mb(device: str) -> float:
    """Peak memory since the last reset_peak, in MiB: CUDA max_memory_allocated, else the
    process's peak RSS (VmHWM; ru_maxrss would carry the parent's peak into a child: Linux keeps
    it across fork and exec)."""
    if device.startswith("cuda"):  # the device named, never the current one (GPU 0 unless set_device)
        return torch.cuda.max_memory_allocated(torch.device(device)) / 2**20
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):  # not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_reserved_mb(device: str) -> float:
    """CUDA max_memory_reserved since the last reset_peak, in MiB: what the caching allocator held,
    i.e. what the card must have free (allocated plus fragmentation); elsewhere the peak RSS."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_reserved(torch.device(device)) / 2**20
    return peak_memory_mb(device)


def context_mb(device: str) -> float | None:
    """Device memory in use outside torch's allocator, in MiB: the CUDA context and library handles
    (total - free - reserved; other processes on the card count too). None off CUDA."""
    if not device.startswith("cuda"):
        return None
    free, total = torch.cuda.mem_get_info(torch.device(device))
    return (total - free - torch.cuda.memory_reserved(torch.device(device))) / 2**20


def reset_peak(device: str) -> None:
    """Start a new peak: CUDA's counters, or the RSS high-water mark (Linux >= 4.0, proc(5) clear_refs)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))
        torch.cuda.reset_peak_memory_stats(torch.device(device))
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def repeat(fns: dict, reps: int, warmup: int = 1, device: str = "cpu") -> dict[str, list[dict]]:
    """Call each fn () -> dict of counts warmup + reps times, interleaved; per fn, the reps'
    dicts with "seconds" added (a fn may time itself by returning "seconds")."""
    runs, progress = {name: [] for name in fns}, Progress()  # a status line on a terminal only
    for i in range(warmup + reps):
        for name, fn in fns.items():
            progress(f"[bench] {name}: " + (f"warm-up {i + 1}/{warmup}" if i < warmup else f"rep {i - warmup + 1}/{reps}"))
            t0 = now()
            out = fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize(torch.device(device))
            out.setdefault("seconds", now() - t0)
            if i >= warmup:
                runs[name].append(out)
    progress.done()
    return runs


def seconds(runs: list[dict]) -> list[float]:
    return [r["seconds"] for r in runs]


def rates(runs: list[dict], key: str) -> list[float]:
    """runs[i][key] / runs[i]["seconds"], e.g. tokens per second."""
    return [r[key] / r["seconds"] for r in runs]


def spread(xs: list[float]) -> dict:
    """Median and range of repeated measurements."""
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}
