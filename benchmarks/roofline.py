#!/usr/bin/env python
"""Work per image, this machine's measured peak, the floor, and how close the models get.

    python benchmarks/roofline.py PACK [--threads 2] [--repeats 3] [--batch 8] [--json OUT]
    python benchmarks/roofline.py --detector D.onnx --classifier C.onnx ...   # loose files

For the pack's fp32 detector (one 1280x960 letterboxed frame, what a 4:3 camera-trap image
becomes) and classifier (one 480x480 crop, and a batch of --batch crops):

* FLOPs (2 x MACs) and bytes (weights, activations written) from the graph (edgenet.flops);
* the fp32 (and int8) matrix-multiply peak through onnxruntime with the same thread count,
  and numpy's fp32 for comparison (edgenet.bench);
* the floor = FLOPs / peak, and the measured forward time through edgenet's own session
  factory (edgenet.providers.make_session), best of --repeats after a warm-up, as a
  fraction of the peak. Prints Markdown ready for benchmarks/NOTES.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def _time_forward(path: Path, shape: list[int], threads: int | None, repeats: int,
                  precision: str = "fp32") -> dict[str, Any]:
    from edgenet.providers import make_session

    sess = make_session(path, device="cpu", threads=threads, precision=precision)
    inp = sess.get_inputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    x = np.random.default_rng(0).random(shape, dtype=np.float32).astype(dtype)
    t0 = time.perf_counter()
    sess.run(None, {inp.name: x})
    first = time.perf_counter() - t0
    times, cpu = [], []
    for _ in range(max(1, repeats)):
        c0 = time.process_time()
        t0 = time.perf_counter()
        sess.run(None, {inp.name: x})
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"shape": shape, "first_s": first, "best_s": min(times),
            "median_s": float(np.median(times)), "best_cpu_s": min(cpu), "repeats": len(times)}


def roofline(detector: Path | None, classifier: Path | None, threads: int | None,
             repeats: int, batch: int, peak_n: int = 2048, int8: dict | None = None
             ) -> dict[str, Any]:
    """Costs, peaks, floors and measured forwards (see module docstring)."""
    from edgenet import flops
    from edgenet.bench import machine_info, measure_matmul_peak, measure_numpy_peak

    out: dict[str, Any] = {"machine": machine_info(), "threads": threads, "models": {}}
    out["peak"] = {
        "onnxruntime_fp32": measure_matmul_peak(threads, peak_n, repeats=5),
        "onnxruntime_int8": measure_matmul_peak(threads, peak_n, repeats=5, kind="int8"),
        "onnxruntime_conv": measure_matmul_peak(threads, peak_n, repeats=5, kind="conv"),
        "numpy_fp32": measure_numpy_peak(peak_n),
    }
    peak = out["peak"]["onnxruntime_fp32"]["best_gflops"]
    jobs = []
    if detector:
        jobs.append(("detector", detector, [1, 3, 960, 1280], "fp32"))
    if classifier:
        jobs.append(("classifier", classifier, [1, 480, 480, 3], "fp32"))
        if batch > 1:
            jobs.append((f"classifier_b{batch}", classifier, [batch, 480, 480, 3], "fp32"))
    for key, path in (int8 or {}).items():
        shape = [1, 3, 960, 1280] if key == "detector" else [1, 480, 480, 3]
        jobs.append((f"{key}_int8", path, shape, "int8"))
    for name, path, shape, precision in jobs:
        cost = flops.count_model(path, {"_": shape})
        entry: dict[str, Any] = {"path": str(path), "cost": cost.to_dict()}
        entry["floor_s"] = cost.flops / 1e9 / peak
        if repeats > 0:
            t = _time_forward(path, shape, threads, repeats, precision)
            entry["forward"] = t
            entry["achieved_gflops"] = cost.flops / t["best_s"] / 1e9
            entry["fraction_of_peak"] = entry["achieved_gflops"] / peak
            conv = out["peak"]["onnxruntime_conv"]
            entry["fraction_of_conv_peak"] = entry["achieved_gflops"] / conv["best_gflops"]
            entry["fraction_of_conv_peak_per_cpu_second"] = (
                cost.flops / max(t["best_cpu_s"], 1e-9) / 1e9 / conv["gflops_per_cpu_second"])
            # Contention-robust view on a shared machine: work per CPU-second vs the peak's.
            per_cpu_peak = out["peak"]["onnxruntime_fp32"]["gflops_per_cpu_second"]
            entry["fraction_of_peak_per_cpu_second"] = (
                cost.flops / max(t["best_cpu_s"], 1e-9) / 1e9 / per_cpu_peak)
        out["models"][name] = entry
    return out


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
    pk = res["peak"]
    o, i8, npk = pk["onnxruntime_fp32"], pk["onnxruntime_int8"], pk["numpy_fp32"]
    cv = pk["onnxruntime_conv"]
    lines = [
        f"Machine: {m['cpu']}, {m.get('usable_cores', m['logical_cores'])} usable cores, "
        f"flags {', '.join(m.get('cpu_flags') or [])}; onnxruntime {m['onnxruntime']}, "
        f"threads {res['threads'] or 'default'}.",
        "",
        f"- fp32 matmul peak (n={o['n']}): onnxruntime {o['best_gflops']:.1f} GFLOP/s "
        f"(median {o['median_gflops']:.1f}; {o['gflops_per_cpu_second']:.1f} per CPU-second), "
        f"numpy {npk['best_gflops']:.1f} GFLOP/s ({npk['runtime']})",
        f"- fp32 3x3 Conv ({cv['n'] // 8} channels, 64x64; onnxruntime's NCHWc kernels): "
        f"{cv['best_gflops']:.1f} GFLOP/s ({cv['gflops_per_cpu_second']:.1f} per CPU-second)",
        f"- int8 matmul peak (MatMulInteger u8 x s8): {i8['best_gflops']:.1f} GOP/s "
        f"({i8['gflops_per_cpu_second']:.1f} per CPU-second)",
        "",
        "| model | input | GFLOPs | GMACs | weights (MB) | activations written (MB) | "
        "FLOPs/byte | floor at fp32 matmul peak (s) | measured (s) | % of matmul peak | "
        "% of matmul peak per CPU-s | % of conv peak per CPU-s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in res["models"].items():
        c = e["cost"]
        shape = next(iter(c["input_shapes"].values()))
        fwd = e.get("forward")
        lines.append(
            f"| {name} | {shape} | {c['flops'] / 1e9:.1f} | {c['macs'] / 1e9:.1f} | "
            f"{c['weight_bytes'] / 1e6:.0f} | {c['activation_bytes'] / 1e6:.0f} | "
            f"{c['arithmetic_intensity_flops_per_byte']:.0f} | {e['floor_s']:.2f} | "
            + (f"{fwd['best_s']:.2f} | {100 * e['fraction_of_peak']:.0f}% | "
               f"{100 * e['fraction_of_peak_per_cpu_second']:.0f}% | "
               f"{100 * e['fraction_of_conv_peak_per_cpu_second']:.0f}% |" if fwd
               else "- | - | - | - |")
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pack", nargs="?", type=Path, help="edgenet pack folder")
    p.add_argument("--detector", type=Path)
    p.add_argument("--classifier", type=Path)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3, help="timed forwards (0: costs only)")
    p.add_argument("--batch", type=int, default=8, help="classifier batch also timed")
    p.add_argument("--int8", action="store_true", help="also time the pack's int8 variant")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    det, cls, int8 = a.detector, a.classifier, {}
    if a.pack:
        info = json.loads((a.pack / "info.json").read_text(encoding="utf-8"))
        det = det or a.pack / info["detector"]
        cls = cls or a.pack / info["classifier"]
        var = (info.get("edgenet") or {}).get("variants", {}).get("int8")
        if a.int8 and var:
            int8 = {"detector": a.pack / var["detector"], "classifier": a.pack / var["classifier"]}
    if not det and not cls:
        p.error("give a PACK or --detector/--classifier")
    res = roofline(det, cls, a.threads, a.repeats, a.batch, int8=int8)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1, default=str), encoding="utf-8")
    print(render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
