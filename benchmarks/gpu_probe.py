#!/usr/bin/env python
"""Each model of a pack, alone, under onnxruntime CUDA option variants: the device floor.

Why: on the H100 (NOTES.md entry 9) the pipeline ran 23 images/s while its detector and
classifier, timed alone, needed ~21 ms of GPU work per image. This tool measures that floor
and what each CUDA option would change, before any option becomes a default or a pipeline
change is made for it:

    python benchmarks/gpu_probe.py PACK [--batches 8,32] [--variants default,nhwc,...]

For each model (`*.onnx` in PACK), batch size and variant it prints and records (`--json`):
session load time, the first run (per-shape warm-up), `run()` with numpy in and out (what a
plain session does), a run with input and output bound on the device (`io_binding`, the
pure device time plus launch overhead), and the host-to-device copy of the input. Variants
are sets of CUDA options (`VARIANTS`); `graph` replays the run as a CUDA graph, which needs
every node on the GPU and fails otherwise (recorded as an error, not raised). Also timed: the
pipeline's CPU-side input tensor (`detector.to_tensor`) for a batch of 960 x 1280 images.

On a machine without CUDA it runs the `default` variant on the CPU (a rehearsal of the
tool, not a measurement of interest). Inputs are random: speed only, no outputs compared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

VARIANTS: dict[str, dict[str, str]] = {
    "default": {},  # edgenet's: HEURISTIC (providers._provider_entry)
    "exhaustive": {"cudnn_conv_algo_search": "EXHAUSTIVE"},
    "nhwc": {"prefer_nhwc": "1"},
    "nhwc_exhaustive": {"prefer_nhwc": "1", "cudnn_conv_algo_search": "EXHAUSTIVE"},
    "tf32_off": {"use_tf32": "0"},
    "graph": {"enable_cuda_graph": "1"},
}


def timed(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    """Milliseconds: the first call, then min and median of REPEATS more."""
    t0 = time.perf_counter()
    fn()
    first = (time.perf_counter() - t0) * 1e3
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"first_ms": first, "min_ms": min(times), "median_ms": statistics.median(times)}


def input_array(sess: ort.InferenceSession, batch: int) -> np.ndarray:
    """A random input of the model's shape at BATCH (the detector at 960 x 1280)."""
    inp = sess.get_inputs()[0]
    dims = [batch, *inp.shape[1:]]
    if not all(isinstance(d, int) for d in dims[1:]):
        dims = [batch, 3, 960, 1280]  # the detector: height and width are dynamic
    dtype = np.float16 if "float16" in inp.type else np.float32
    return np.random.default_rng(0).random(dims, dtype=np.float32).astype(dtype)


def probe_model(path: Path, batch: int, variant: str, cuda: bool,
                repeats: int) -> dict[str, Any]:
    row: dict[str, Any] = {"model": path.name, "batch": batch, "variant": variant}
    if cuda:
        opts = {"cudnn_conv_algo_search": "HEURISTIC", **VARIANTS[variant]}
        providers: list[Any] = [("CUDAExecutionProvider", opts), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    try:
        t0 = time.perf_counter()
        sess = ort.InferenceSession(str(path), providers=providers)
        row["load_s"] = time.perf_counter() - t0
        x = input_array(sess, batch)
        name = sess.get_inputs()[0].name
        row["input_shape"] = list(x.shape)
        if variant != "graph":  # a graph session runs only through its binding
            row["numpy_io"] = timed(lambda: sess.run(None, {name: x}), repeats)
        if cuda:
            x_dev = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
            binding = sess.io_binding()
            binding.bind_ortvalue_input(name, x_dev)
            for out in sess.get_outputs():
                binding.bind_output(out.name, "cuda", 0)
            row["device_io"] = timed(lambda: sess.run_with_iobinding(binding), repeats)
            row["h2d_input"] = timed(
                lambda: ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0), repeats)
    except Exception as exc:  # noqa: BLE001 - an option this build rejects is a result
        row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return row


def probe_to_tensor(batch: int, repeats: int) -> dict[str, Any]:
    from edgenet.detector import to_tensor

    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (960, 1280, 3), dtype=np.uint8) for _ in range(batch)]
    return {"step": "detector.to_tensor", "batch": batch,
            **timed(lambda: to_tensor(imgs), repeats)}


def _fmt(t: dict[str, float] | None) -> str:
    return "-" if not t else f"{t['min_ms']:.1f}/{t['median_ms']:.1f} (first {t['first_ms']:.0f})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pack", type=Path)
    p.add_argument("--batches", default="8")
    p.add_argument("--variants", default="default,nhwc,exhaustive,graph")
    p.add_argument("--only", default="", help="models whose file name contains this")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)

    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    variants = [v.strip() for v in a.variants.split(",") if v.strip()] if cuda else ["default"]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    batches = [int(b) for b in a.batches.split(",")]
    models = sorted(m for m in a.pack.glob("*.onnx") if a.only in m.name)
    print(f"onnxruntime {ort.__version__}, {'CUDA' if cuda else 'CPU only'}; "
          "times in ms: min/median (first run)", flush=True)
    rows = []
    for model in models:
        for batch in batches:
            for variant in variants:
                row = probe_model(model, batch, variant, cuda, a.repeats)
                rows.append(row)
                print(f"{model.name} b{batch} {variant}: " + (row["error"] if "error" in row
                      else f"load {row['load_s']:.1f} s; numpy io {_fmt(row.get('numpy_io'))}; "
                      f"device io {_fmt(row.get('device_io'))}; "
                      f"H2D {_fmt(row.get('h2d_input'))}"), flush=True)
    steps = [probe_to_tensor(b, a.repeats) for b in batches]
    for s in steps:
        print(f"{s['step']} b{s['batch']}: {_fmt(s)}", flush=True)
    if a.json:
        a.json.write_text(json.dumps({"onnxruntime": ort.__version__, "cuda": cuda,
                                      "models": rows, "cpu_steps": steps}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
