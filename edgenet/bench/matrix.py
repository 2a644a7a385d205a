"""The matrix: every device x precision x batch-size cell, plus the machine's peaks."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgenet.bench.cell import CellSpec, run_cell
from edgenet.bench.machine import machine_info
from edgenet.bench.peak import measure_matmul_peak, measure_numpy_peak
from edgenet.bench.report import cell_line
from edgenet.bench.stages import REPORT_FORMAT
from edgenet.bench.variants import fidelity_summary, floor_estimate, load_pack_info, pack_variants
from edgenet.pack import files_precision


@dataclass
class BenchConfig:
    """Everything `edgenet bench` was asked to do."""

    pack: Path
    images: list[Path]
    devices: list[str]
    precisions: list[str]
    batch_sizes: list[int]
    threads: int | None = None
    workers: int | None = None
    images_source: str = "generated"
    measure_peak: bool = True
    peak_n: int = 2048
    cell_timeout: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def run_matrix(cfg: BenchConfig, workdir: Path, log: Any = None) -> dict[str, Any]:
    """Run every cell; return the whole report (machine, peaks, cells, fidelity)."""
    say = log or (lambda msg: None)
    info = load_pack_info(cfg.pack)
    variants = pack_variants(info)
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "pack": {"path": str(cfg.pack), "version": info.get("version"),
                 "type": info.get("type"), "variants": sorted(variants),
                 "synthetic": (info.get("edgenet") or {}).get("synthetic")
                 if isinstance(info.get("edgenet"), dict) else None},
        "images": {"source": cfg.images_source, "count": len(cfg.images),
                   "sizes": _image_sizes(cfg.images)},
        "threads": cfg.threads,
        "workers": cfg.workers,
        "cells": [],
    }
    if cfg.measure_peak:
        say("measuring the fp32 matmul peak (onnxruntime, numpy) ...")
        report["peak"] = {
            "onnxruntime_fp32": measure_matmul_peak(cfg.threads, cfg.peak_n),
            "numpy_fp32": measure_numpy_peak(cfg.peak_n),
        }
        for kind in ("int8", "conv"):
            with contextlib.suppress(Exception):
                report["peak"][f"onnxruntime_{kind}"] = measure_matmul_peak(
                    cfg.threads, cfg.peak_n, kind=kind
                )
    fidelity = {p: fidelity_summary(cfg.pack, info, p) for p in cfg.precisions}
    report["fidelity"] = fidelity
    for device in cfg.devices:
        for precision in cfg.precisions:
            for bs in cfg.batch_sizes:
                spec = CellSpec(
                    pack=str(cfg.pack), images=[str(p) for p in cfg.images], device=device,
                    precision=precision, batch_size=bs, threads=cfg.threads,
                    workers=cfg.workers,
                )
                say(f"cell {spec.key()} ...")
                if files_precision(precision) not in variants:
                    cell = {"key": spec.key(), "device": device, "precision": precision,
                            "batch_size": bs, "threads": cfg.threads, "ok": False,
                            "error": f"the pack has no {precision} variant "
                                     f"(has {', '.join(sorted(variants))})"}
                else:
                    cell = run_cell(spec, workdir, cfg.cell_timeout)
                cell["fidelity"] = fidelity.get(precision, {}).get("text", "")
                report["cells"].append(cell)
                say(cell_line(cell))
    report["floor"] = floor_estimate(report, cfg.extra.get("costs"))
    if cfg.extra.get("costs"):
        report["costs"] = cfg.extra["costs"]
    return report


def _image_sizes(images: Sequence[Path]) -> dict[str, int]:
    from PIL import Image

    sizes: dict[str, int] = {}
    for p in images:
        try:
            with Image.open(p) as im:
                key = f"{im.width}x{im.height}"
        except Exception:  # noqa: BLE001 - a bad image is the pipeline's business
            key = "unreadable"
        sizes[key] = sizes.get(key, 0) + 1
    return sizes
