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
are sets of CUDA options (`VARIANTS`); `graph` replays the run as a CUDA graph at one bound
pair of buffers, as `EDGENET_CUDA_GRAPH=1` runs the classifier (`edgenet/cuda_graph.py`; the
detector is skipped: its output size follows its input's); a session onnxruntime cannot
capture is recorded as an error, not raised. Also timed: the
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
    # no search at all: the fp16 classifier's first batch spent ~9.5 s in HEURISTIC's warm-up
    # on the H100 (NOTES.md entry 9); is the steady state worse without it?
    "no_search": {"cudnn_conv_algo_search": "DEFAULT"},
    "nhwc": {"prefer_nhwc": "1"},
    "nhwc_exhaustive": {"prefer_nhwc": "1", "cudnn_conv_algo_search": "EXHAUSTIVE"},
    "tf32_off": {"use_tf32": "0"},
    "graph": {"enable_cuda_graph": "1"},
    "graph_nhwc": {"enable_cuda_graph": "1", "prefer_nhwc": "1"},
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
    rng = np.random.default_rng(0)
    if "uint8" in inp.type:  # a `uint8_input_model`: letterboxed pixels, NHWC
        return rng.integers(0, 256, (batch, 960, 1280, 3), dtype=np.uint8)
    dims = [batch, *inp.shape[1:]]
    if not all(isinstance(d, int) for d in dims[1:]):
        dims = [batch, 3, 960, 1280]  # the detector: height and width are dynamic
    dtype = np.float16 if "float16" in inp.type else np.float32
    return rng.random(dims, dtype=np.float32).astype(dtype)


def uint8_input_model(src: Path, dst: Path) -> Path:
    """SRC with its float NCHW input replaced by uint8 NHWC pixels converted inside the graph
    by the nodes of `onnx_writer.unit_float_model_bytes` (what `EDGENET_DEVICE_PIXELS=1` runs as
    a second session): what feeding the GPU uint8 costs when fused into one graph. Needs
    `onnx` (the device image has it; edgenet's runtime does not)."""
    import onnx

    from edgenet.onnx_writer import unit_float_model_bytes

    model = onnx.load(str(src))
    graph = model.graph
    old = graph.input[0]
    pre = onnx.load_from_string(unit_float_model_bytes(
        old.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16))
    prefix = f"{old.name}_"
    for node in pre.graph.node:  # the pixel graph's names, kept apart from the detector's
        node.input[:] = [prefix + n for n in node.input]
        node.output[:] = [old.name if n == "tensor" else prefix + n for n in node.output]
    for init in pre.graph.initializer:
        init.name = prefix + init.name
    pixels = pre.graph.input[0]
    pixels.name = prefix + pixels.name
    graph.input.remove(old)
    graph.input.insert(0, pixels)
    graph.initializer.extend(pre.graph.initializer)
    for node in reversed(pre.graph.node):
        graph.node.insert(0, node)
    onnx.save(model, str(dst))
    return dst


def division_exactness(cuda: bool) -> dict[str, Any]:
    """Is the pixel-conversion graph the pipeline runs with `EDGENET_DEVICE_PIXELS=1`
    (`onnx_writer.unit_float_model_bytes`) bit-equal to `detector.to_tensor` for all 256 pixel
    values on this provider? (It must be before that switch may become a default.)"""
    from edgenet.detector import to_tensor
    from edgenet.onnx_writer import unit_float_model_bytes

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else None
    sess = ort.InferenceSession(unit_float_model_bytes(), providers=providers)
    img = np.repeat(np.arange(256, dtype=np.uint8).reshape(16, 16, 1), 3, axis=2)
    ours = sess.run(None, {"pixels": img[None]})[0]
    want = to_tensor([img])
    bad = int(np.count_nonzero(ours.view(np.uint32) != want.view(np.uint32)))
    return {"step": "in-graph uint8 -> float", "provider": sess.get_providers()[0],
            "values_differing_from_to_tensor": bad}


def probe_model(path: Path, batch: int, variant: str, cuda: bool,
                repeats: int) -> dict[str, Any]:
    row: dict[str, Any] = {"model": path.name, "batch": batch, "variant": variant}
    graph = VARIANTS[variant].get("enable_cuda_graph") == "1"
    if graph and path.name.startswith("md_"):
        # a graph replays fixed buffers; the detector's output size follows its input's
        row["error"] = "skipped: the detector's output shape follows the letterbox shape"
        return row
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
        if not graph:  # a graph session runs only through its binding
            row["numpy_io"] = timed(lambda: sess.run(None, {name: x}), repeats)
        if cuda and graph:
            # what `EDGENET_CUDA_GRAPH=1` runs: one bound pair of device buffers; the first
            # runs capture, then `device_io` is a replay and `graph_runner` adds both copies
            from edgenet.cuda_graph import FixedBindingRunner

            out = sess.get_outputs()[0]
            runner = FixedBindingRunner(sess, name, out.name, batch, tuple(x.shape[1:]),
                                        int(out.shape[-1]))
            row["graph_runner"] = timed(lambda: runner.run(x), repeats)
            row["device_io"] = timed(lambda: sess.run_with_iobinding(runner.binding), repeats)
        elif cuda:
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
    p.add_argument("--only", default="",
                   help="models whose file name contains this (or one of these, comma-separated)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--uint8-detector", action="store_true",
                   help="also time each detector with uint8 NHWC input converted in the graph "
                        "(needs onnx), after checking that conversion is bit-exact")
    a = p.parse_args(argv)

    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    variants = [v.strip() for v in a.variants.split(",") if v.strip()] if cuda else ["default"]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    batches = [int(b) for b in a.batches.split(",")]
    wanted = [w for w in a.only.split(",") if w] or [""]
    models = sorted(m for m in a.pack.glob("*.onnx") if any(w in m.name for w in wanted))
    print(f"onnxruntime {ort.__version__}, {'CUDA' if cuda else 'CPU only'}; "
          "times in ms: min/median (first run)", flush=True)
    exact: dict[str, Any] = {}
    if a.uint8_detector:
        import tempfile

        exact = division_exactness(cuda)
        print(f"{exact['step']} on {exact['provider']}: "
              f"{exact['values_differing_from_to_tensor']} of 256 values differ", flush=True)
        tmp = Path(tempfile.mkdtemp(prefix="gpu_probe_"))
        models += [uint8_input_model(m, tmp / m.name.replace(".onnx", ".uint8in.onnx"))
                   for m in models if m.name.startswith("md_")]
    rows: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []

    def save() -> None:  # after every row: a probe cut short by its time limit keeps the rest
        if a.json:
            a.json.write_text(json.dumps({"onnxruntime": ort.__version__, "cuda": cuda,
                                          "models": rows, "cpu_steps": steps,
                                          "uint8_conversion": exact}, indent=1))

    for variant in variants:  # variant-major: a probe cut short still has every model's default
        for model in models:
            for batch in batches:
                row = probe_model(model, batch, variant, cuda, a.repeats)
                rows.append(row)
                save()
                print(f"{model.name} b{batch} {variant}: " + (row["error"] if "error" in row
                      else f"load {row['load_s']:.1f} s; numpy io {_fmt(row.get('numpy_io'))}; "
                      f"device io {_fmt(row.get('device_io'))}; "
                      + (f"graph runner {_fmt(row['graph_runner'])}; "
                         if "graph_runner" in row else "") +
                      f"H2D {_fmt(row.get('h2d_input'))}"), flush=True)
    steps += [probe_to_tensor(b, a.repeats) for b in batches]
    for step in steps:
        print(f"{step['step']} b{step['batch']}: {_fmt(step)}", flush=True)
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
