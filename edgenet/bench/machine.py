"""What machine a report was measured on (CPU model and flags, GPUs, versions)."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from edgenet.run_defaults import cpu_flags


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    if sys.platform == "darwin":
        with contextlib.suppress(Exception):
            return subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True, text=True, timeout=5,
            ).stdout.strip()
    return platform.processor() or platform.machine()


def nvidia_smi_rows(query: list[str], timeout: float) -> list[list[str]] | None:
    """The CSV rows `nvidia-smi QUERY` prints, split into stripped fields; None where
    nvidia-smi is missing or fails (no NVIDIA GPU, no driver)."""
    try:
        out = subprocess.run(["nvidia-smi", *query], capture_output=True, text=True,
                             timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return [[p.strip() for p in line.split(",")] for line in out.stdout.strip().splitlines()]


def _gpus() -> list[dict[str, str]]:
    rows = nvidia_smi_rows(["--query-gpu=name,memory.total,driver_version",
                            "--format=csv,noheader"], timeout=10) or []
    return [{"name": r[0], "memory": r[1], "driver": r[2]} for r in rows if len(r) == 3]


def machine_info() -> dict[str, Any]:
    """What a reader needs to compare two reports: CPU, cores, memory, runtime versions."""
    import numpy as np
    import onnxruntime as ort

    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "numpy": np.__version__,
        "gpus": _gpus(),
    }
    with contextlib.suppress(Exception):
        info["usable_cores"] = len(os.sched_getaffinity(0))  # type: ignore[attr-defined]
    try:
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        with contextlib.suppress(OSError, ValueError):
            pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            info["memory_gb"] = round(pages / 2**30, 1)
    from edgenet import __version__

    info["edgenet"] = __version__
    return info
