"""The machine's arithmetic limit, measured through onnxruntime itself: a large fp32 MatMul
(the issue's "peak"), a 3x3 Conv (onnxruntime's NCHWc kernels) and an int8 MatMulInteger, each
written as a tiny ONNX model with `edgenet.onnx_writer` (`onnx` is not a runtime dependency);
numpy's matmul beside them for scale."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

from edgenet.onnx_writer import FLOAT, attr_ints, model, node, tensor, value_info

if TYPE_CHECKING:  # numpy is imported where used: `edgenet --help` should not pay for it
    import numpy as np

def matmul_model_bytes(n: int, kind: str = "fp32", constant_b: np.ndarray | None = None
                       ) -> bytes:
    """Serialized ONNX model computing A(n,n) @ B(n,n): fp32 MatMul or uint8 x int8
    MatMulInteger (the int8 path VNNI accelerates). Field numbers follow onnx.proto3.

    With `constant_b`, B is an initializer, as a layer's weights are: onnxruntime then packs
    it once at load (as it does Conv/Gemm weights), so the timing is the kernel alone."""
    if kind == "fp32":
        op, ta, tb, tc = "MatMul", 1, 1, 1
    elif kind == "int8":
        op, ta, tb, tc = "MatMulInteger", 2, 3, 6  # uint8 x int8 -> int32
    else:
        raise ValueError(f"unknown matmul kind {kind!r}")
    inputs = [value_info("A", ta, (n, n))]
    if constant_b is None:
        inputs.append(value_info("B", tb, (n, n)))
    return model([node(op, ["A", "B"], ["C"])], "peak", inputs, [value_info("C", tc, (n, n))],
                 [] if constant_b is None else [tensor("B", constant_b, tb)])


def conv_model_bytes(weights: np.ndarray, h: int, w: int) -> bytes:
    """Serialized ONNX model: a 3x3, pad 1 fp32 Conv of X (1, C, h, w) with constant
    `weights` (C, C, 3, 3), the layer shape that dominates YOLOv5 and EfficientNet."""
    c = weights.shape[0]
    conv = node("Conv", ["X", "W"], ["Y"], attr_ints("kernel_shape", [3, 3]),
                attr_ints("pads", [1, 1, 1, 1]))
    return model([conv], "peak_conv", [value_info("X", FLOAT, (1, c, h, w))],
                 [value_info("Y", FLOAT, (1, c, h, w))],
                 [tensor("W", weights.astype("float32"), FLOAT)])


def measure_matmul_peak(
    threads: int | None = None, n: int = 2048, repeats: int = 5, kind: str = "fp32"
) -> dict[str, Any]:
    """Best and median GFLOP/s (GOP/s for int8) of a kernel run through onnxruntime's CPU
    provider with `threads` intra-op threads (None: onnxruntime's default).

    kind "fp32": an n x n x n MatMul with B constant (packed once at load, as layer weights
    are); "int8": the same as uint8 x int8 MatMulInteger (VNNI's path); "conv": a 3x3 Conv,
    n/8 channels at 64x64 (onnxruntime runs Conv through its NCHWc kernels, which on some
    CPUs beat its GEMM: the detector can then exceed the MatMul "peak").

    Why onnxruntime and not numpy: the roofline we compare the detector against must be the
    one of the kernels that run it (MLAS), with the same threading."""
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = int(threads)
    rng = np.random.default_rng(0)
    a: np.ndarray
    b: np.ndarray
    if kind == "fp32":
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        model, feeds, flops = matmul_model_bytes(n, kind, constant_b=b), {"A": a}, 2.0 * n**3
    elif kind == "int8":
        a = rng.integers(0, 255, (n, n), dtype=np.uint8)
        b = rng.integers(-127, 127, (n, n), dtype=np.int8)
        model, feeds, flops = matmul_model_bytes(n, kind, constant_b=b), {"A": a}, 2.0 * n**3
    elif kind == "conv":
        c, hw = max(n // 8, 8), 64
        wts = rng.standard_normal((c, c, 3, 3), dtype=np.float32) * 0.05
        x = rng.standard_normal((1, c, hw, hw), dtype=np.float32)
        model, feeds = conv_model_bytes(wts, hw, hw), {"X": x}
        flops = 2.0 * c * c * 9 * hw * hw
    else:
        raise ValueError(f"unknown kind {kind!r}")
    sess = ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])
    sess.run(None, feeds)  # warm-up: thread pool start, packing buffers
    times = []
    cpu = []
    for _ in range(max(1, repeats)):
        c0 = time.process_time()
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "kind": kind,
        "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
        "n": n,
        "threads": threads,
        "best_gflops": flops / min(times) / 1e9,
        "median_gflops": flops / float(np.median(times)) / 1e9,
        # Per CPU-second of this process: on a shared machine, best x threads estimates what
        # the cores would give uncontended (wall-clock numbers include time other jobs took).
        "gflops_per_cpu_second": flops / max(min(cpu), 1e-9) / 1e9,
        "repeats": len(times),
    }


def measure_numpy_peak(n: int = 2048, repeats: int = 5) -> dict[str, Any]:
    """The same fp32 multiply through numpy's BLAS (its own thread count), for comparison."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    flops = 2.0 * n**3
    blas = ""
    with contextlib.suppress(Exception):
        cfg = np.show_config(mode="dicts")  # numpy >= 1.25
        blas = str(cfg.get("Build Dependencies", {}).get("blas", {}).get("name", ""))
    return {
        "kind": "fp32",
        "runtime": f"numpy {np.__version__} {blas}".strip(),
        "n": n,
        "best_gflops": flops / min(times) / 1e9,
        "median_gflops": flops / float(np.median(times)) / 1e9,
        "repeats": len(times),
    }
