"""Measuring a command: wall time, peak RSS of its process tree, peak GPU memory, the
hypervisor's steal, this machine's speed right now, and one-image (cold-start) runs."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

ColdJob = tuple[Callable[[Path], list[str]], Path]  # (command for an output path, output)



def _cpu_ticks() -> list[int] | None:
    """This machine's CPU time counters (/proc/stat's "cpu" line: user, nice, system, idle,
    iowait, irq, softirq, steal), or None where there is no /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    return [int(v) for v in fields[1:9]] if fields and fields[0] == "cpu" else None


def steal_pct(before: list[int] | None, after: list[int] | None) -> float | None:
    """Share (%) of all CPUs' time between two `_cpu_ticks` readings that the hypervisor gave
    to other guests ("steal"): the part of a shared VM's noise that the guest can see."""
    if not before or not after or len(before) < 8 or len(after) < 8:
        return None
    total = sum(after) - sum(before)
    return 100.0 * (after[7] - before[7]) / total if total > 0 else None


def machine_rate() -> float | None:
    """This machine's speed right now: the best GFLOP/s of onnxruntime's 3x3 Conv (256
    channels, 64 x 64; the kernel that dominates both models) over 20 runs of ~20 ms each.
    On a quiet 2-core VM of this kind ~245; a neighbour's load can take a third of it
    without showing as steal (benchmarks/NOTES.md, History of the README table)."""
    try:
        from edgenet.bench.peak import measure_matmul_peak

        return float(measure_matmul_peak(kind="conv", repeats=20)["best_gflops"])
    except Exception:  # noqa: BLE001 - informative only
        return None


def run_measured(cmd: Sequence[str], env: Mapping[str, str] | None = None,
                 timeout: float | None = None) -> dict[str, Any]:
    """Run CMD; wall time, exit code, peak RSS of its process tree, output tail, and the
    hypervisor's steal over the run (`steal_pct`).

    RSS: psutil polling of the whole tree every 50 ms (sum over processes; `edgenet.bench.cell
    .TreeMonitor`, the same poller `edgenet bench` uses) when psutil is installed; and, on
    POSIX, the kernel's own peak of the largest process from wait4."""
    ticks0 = _cpu_ticks()
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=dict(env) if env is not None else None)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(
        lambda: proc.stdout.read(65536), b"")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    from edgenet.bench.cell import TreeMonitor

    gpu = _GpuMemory()
    wait4_peak = None
    deadline = None if timeout is None else time.monotonic() + timeout
    with TreeMonitor(proc.pid) as tree:
        if hasattr(os, "wait4"):
            while True:
                pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    wait4_peak = ru.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
                    break
                if deadline is not None and time.monotonic() > deadline:
                    proc.kill()
                time.sleep(0.02)
        else:  # pragma: no cover - Windows
            proc.wait(timeout=timeout)
        wall = time.perf_counter() - t0
    gpu.stop()
    reader.join(timeout=5)
    out = b"".join(chunks).decode("utf-8", "replace")
    return {
        "cmd": [str(c) for c in cmd],
        "returncode": proc.returncode,
        "wall_s": wall,
        "peak_rss_tree_mb": tree.peak_rss_mb or None,
        "peak_rss_wait4_mb": wait4_peak,
        "peak_gpu_mb": gpu.peak_mb,
        "cpu_steal_pct": steal_pct(ticks0, _cpu_ticks()),
        "output_tail": out[-2000:],
    }


class _GpuMemory:
    """Peak GPU memory in use while a command runs, above what was in use before it started
    (NVML through nvidia-ml-py, polled every 50 ms; GPU 0). Does nothing without NVML or a
    GPU: `peak_mb` stays None. One command at a time runs, so the difference is its own."""

    def __init__(self) -> None:
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # noqa: BLE001 - no NVML, no driver, no GPU: nothing to measure
            return
        base = pynvml.nvmlDeviceGetMemoryInfo(handle).used

        def poll() -> None:
            peak = 0
            while not self._stop.is_set():
                try:
                    peak = max(peak, pynvml.nvmlDeviceGetMemoryInfo(handle).used - base)
                except Exception:  # noqa: BLE001
                    break
                self.peak_mb = peak / 2**20
                self._stop.wait(0.05)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if hasattr(self, "_thread"):
            self._thread.join(timeout=2)


def prime(cmd_for: Callable[[Path], list[str]], out: Path, env: Mapping[str, str]
          ) -> float | None:
    """One unmeasured run of CMD_FOR(OUT) before a tool's whole run, so that a first start's
    one-off work (edgenet's cache writes) is not counted as every run's; its wall time, or
    None where it failed (the whole run then shows the error)."""
    out.unlink(missing_ok=True)
    run = run_measured(cmd_for(out), env)
    out.unlink(missing_ok=True)
    return run["wall_s"] if run["returncode"] == 0 else None


def cold_starts(jobs: Sequence[ColdJob], env: Mapping[str, str],
                runs: int = 3) -> list[dict[str, Any]]:
    """Each job's one-image command `runs` times, the tools taking turns (job order reversed
    every other round: A B C, C B A, A B C), so a slow spell of this shared VM falls on every
    tool alike instead of on whichever ran its cold starts then. Each run starts without its
    output (so it does the work). Per job: {"cold_start_s": median wall time of the runs
    that succeeded (None if none did), "cold_start_runs_s": every run's wall time, None for
    a failed run}."""
    walls: list[list[float | None]] = [[] for _ in jobs]
    steals: list[list[float | None]] = [[] for _ in jobs]
    for r in range(max(1, runs)):
        order = list(range(len(jobs)))
        for i in order if r % 2 == 0 else order[::-1]:
            cmd_for, out = jobs[i]
            out.unlink(missing_ok=True)
            run = run_measured(cmd_for(out), env)
            walls[i].append(run["wall_s"] if run["returncode"] == 0 and out.is_file() else None)
            steals[i].append(run["cpu_steal_pct"])
    results = []
    for job_walls, job_steals in zip(walls, steals, strict=True):
        ok = [w for w in job_walls if w is not None]
        results.append({"cold_start_s": statistics.median(ok) if ok else None,
                        "cold_start_runs_s": job_walls, "cold_start_steal_pct": job_steals})
    return results


def cold_start(cmd_for: Callable[[Path], list[str]], out: Path, env: Mapping[str, str],
               runs: int = 3) -> dict[str, Any]:
    """One command's cold starts (`cold_starts` with one job)."""
    return cold_starts([(cmd_for, out)], env, runs)[0]
