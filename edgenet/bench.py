"""`edgenet bench`: throughput of a pack over devices x precisions x batch sizes, per stage.

Why it is built this way:

* every matrix cell runs in its own fresh Python process (`python -m edgenet.bench _cell`), so
  the peak RSS and the start-up cost of one cell are not polluted by the cells before it, and a
  provider that crashes (a GPU driver, an unsupported fp16 op) costs one cell, not the report;
* the parent polls the child's whole process tree (decode workers included) for RSS with psutil
  when it is installed, and the child reports its own `getrusage` peak as well;
* stage times come from the same pipeline `edgenet run` uses (`edgenet.pipeline`); the
  numbers are the work each stage did (seconds summed over the run), next to the wall time
  of the whole run, so overlap between stages shows as stage sum > wall;
* the machine's arithmetic limit is measured with a large fp32 MatMul through onnxruntime
  itself (same thread count), so "detector at N% of peak" compares like with like. The
  MatMul model is written with a ten-line protobuf encoder: `onnx` is not a runtime
  dependency, and `edgenet bench` must work from a plain install;
* outputs: JSON (everything, for `--compare`), a Markdown table, and a PNG of stage times
  (matplotlib when installed, else a small PIL renderer: pillow is a runtime dependency).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgenet.errors import EdgenetError, InputError
from edgenet.onnx_writer import FLOAT, attr_ints, model, node, tensor, value_info
from edgenet.run_defaults import cpu_flags

if TYPE_CHECKING:  # numpy is imported where used: `edgenet --help` should not pay for it
    import numpy as np

STAGES: tuple[str, ...] = ("decode_letterbox", "detector", "nms", "crop", "classifier", "ensemble")
STAGE_LABELS: dict[str, str] = {
    "decode_letterbox": "decode+letterbox",
    "detector": "detector",
    "nms": "NMS",
    "crop": "crop",
    "classifier": "classifier",
    "ensemble": "ensemble",
}
STAGE_COLOURS: dict[str, tuple[int, int, int]] = {
    "decode_letterbox": (0x02, 0x9E, 0x73),
    "detector": (0xDE, 0x8F, 0x05),
    "nms": (0xCC, 0x78, 0xBC),
    "crop": (0xCA, 0x91, 0x61),
    "classifier": (0x01, 0x73, 0xB2),
    "ensemble": (0x94, 0x94, 0x94),
}
REPORT_FORMAT = "edgenet-bench/1"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp")


# ------------------------------------------------------------------------------------------
# a minimal ONNX writer (MatMul / MatMulInteger) for the peak measurement


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


# ------------------------------------------------------------------------------------------
# the machine


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


def _gpus() -> list[dict[str, str]]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
             "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            gpus.append({"name": parts[0], "memory": parts[1], "driver": parts[2]})
    return gpus


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


# ------------------------------------------------------------------------------------------
# default images

# (width, height) of common camera-trap frames; the 4:3 ones letterbox to the same 960x1280
# detector input, so batches > 1 are exercised; 16:9 gives a second shape (768x1280).
_SYNTH_SIZES: tuple[tuple[int, int], ...] = (
    (2048, 1536), (2048, 1536), (2560, 1920), (1920, 1080),
    (2048, 1536), (2592, 1944), (1920, 1080), (2048, 1536),
)


def generate_images(dst: str | Path, count: int = 8, seed: int = 0) -> list[Path]:
    """Write `count` camera-trap-like JPEGs (sky, vegetation texture, ground, a few dark
    animal-shaped blobs, sensor noise) at typical trail-camera sizes; return their paths.

    Why synthetic: `edgenet bench` must run on a fresh install with no data; decode cost
    depends on size and JPEG entropy, so the images are full-size and textured, not flat."""
    import numpy as np
    from PIL import Image

    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        w, h = _SYNTH_SIZES[i % len(_SYNTH_SIZES)]
        # Build at quarter resolution and upscale: keeps generation fast on small machines.
        sw, sh = max(w // 4, 8), max(h // 4, 8)
        yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
        horizon = sh * (0.3 + 0.2 * rng.random())
        sky = np.stack([150 + 0 * yy, 180 + 0 * yy, 210 + 0 * yy], -1) - yy[..., None] * 0.2
        ground = np.stack([90 + 0 * yy, 80 + 0 * yy, 50 + 0 * yy], -1)
        img = np.where((yy < horizon)[..., None], sky, ground)
        texture = rng.normal(0, 25, (sh // 4 + 1, sw // 4 + 1, 1)).repeat(4, 0).repeat(4, 1)
        img = img + texture[:sh, :sw] * (yy >= horizon)[..., None]
        for _ in range(int(rng.integers(1, 4))):
            cx, cy = rng.uniform(0.15, 0.85) * sw, rng.uniform(0.5, 0.9) * sh
            ax, ay = rng.uniform(0.05, 0.15) * sw, rng.uniform(0.04, 0.1) * sh
            blob = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 < 1
            img[blob] = rng.uniform(30, 110, 3)
        if i % 3 == 2:  # a night (infrared) frame: grey
            img = img.mean(-1, keepdims=True).repeat(3, -1) * 0.6
        small = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        big = np.asarray(small.resize((w, h), Image.BILINEAR), dtype=np.int16)
        big = big + rng.integers(-6, 7, big.shape, dtype=np.int16)
        path = out / f"synthetic_{i:03d}_{w}x{h}.jpg"
        Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def list_images(folder: str | Path) -> list[Path]:
    """Images directly or recursively under `folder`, sorted (bench's own simple discovery)."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError("image folder not found", path=root, fix="pass an existing --images DIR")
    found = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                   and p.is_file())
    if not found:
        raise InputError(
            "no images (.jpg/.png/.tif/.webp) in this folder", path=root,
            fix="pass a folder with images, or leave --images out to use generated ones",
        )
    return found


# ------------------------------------------------------------------------------------------
# the pack: variants and their fidelity


def _load_info(pack: Path) -> dict[str, Any]:
    info_path = pack / "info.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise EdgenetError(
            "not a model pack (no info.json)", path=pack,
            fix="pass --model PACK (`edgenet convert pack` or `edgenet models pull` makes one)",
        ) from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise EdgenetError(f"cannot read info.json: {exc}", path=info_path,
                           fix="re-create the pack") from exc
    if not isinstance(info, dict):
        raise EdgenetError("info.json is not an object", path=info_path, fix="re-create the pack")
    return info


def pack_variants(info: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Precision -> {detector, classifier, fidelity...} from info.json's "edgenet.variants";
    fp32 is the pack's own detector/classifier when not listed."""
    ext = info.get("edgenet") if isinstance(info.get("edgenet"), dict) else {}
    raw = ext.get("variants", {}) if isinstance(ext, dict) else {}
    variants: dict[str, dict[str, Any]] = {}
    if isinstance(raw, dict):
        for k, v in raw.items():
            variants[str(k)] = dict(v) if isinstance(v, dict) else {"value": v}
    elif isinstance(raw, list):
        for v in raw:
            if isinstance(v, dict) and "precision" in v:
                variants[str(v["precision"])] = dict(v)
    variants.setdefault("fp32", {"detector": info.get("detector"),
                                 "classifier": info.get("classifier")})
    return variants


def _find_key(obj: Any, key: str) -> Any:
    """First value stored under `key` anywhere in a nested dict/list (depth first)."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        for v in obj.values():
            r = _find_key(v, key)
            if r is not None:
                return r
    elif isinstance(obj, list):
        for v in obj:
            r = _find_key(v, key)
            if r is not None:
                return r
    return None


def _read_json(path: Path) -> Any:
    with contextlib.suppress(OSError, json.JSONDecodeError):
        return json.loads(path.read_text(encoding="utf-8"))
    return None


def _variant_fidelity(pack: Path, info: Mapping[str, Any], precision: str
                      ) -> tuple[Any, Any]:
    """(detector part, classifier part) of the fidelity report for one precision.

    The converter writes one pack-level report (info.json "edgenet.fidelity" names it) with
    `detector[precision]` and `classifier[precision]` entries; a variant entry may also carry
    its own report (inline or a file name)."""
    ext = info.get("edgenet") if isinstance(info.get("edgenet"), dict) else {}
    report = ext.get("fidelity") if isinstance(ext, dict) else None
    if isinstance(report, str):
        report = _read_json(pack / report)
    det = cls = None
    if isinstance(report, dict):
        d, c = report.get("detector"), report.get("classifier")
        det = d.get(precision) if isinstance(d, dict) else None
        cls = c.get(precision) if isinstance(c, dict) else None
    if det is None and cls is None:
        own = pack_variants(info).get(precision, {}).get("fidelity")
        if isinstance(own, str):
            own = _read_json(pack / own)
        if isinstance(own, dict):
            det = own.get("detector", own)
            cls = own.get("classifier", own)
    return det, cls


def fidelity_summary(pack: Path, info: Mapping[str, Any], precision: str) -> dict[str, Any]:
    """The numbers a user picks a precision by: detector recall/precision of the detections
    the ensemble uses (conf >= 0.1) and classifier top-1 / top-5 agreement, vs fp32."""
    if precision == "fp32":
        return {"text": "reference (fp32)"}
    if precision not in pack_variants(info):
        return {"text": "not in pack"}
    det_part, cls_part = _variant_fidelity(pack, info, precision)
    if det_part is None and cls_part is None:
        return {"text": "no fidelity report"}
    det_used = _find_key(det_part, "detections_used")
    top1 = _find_key(cls_part, "top1_agreement")
    top5 = _find_key(cls_part, "top5_overlap")
    out: dict[str, Any] = {}
    parts = []
    if isinstance(det_used, dict):
        out["detector_recall"] = det_used.get("recall")
        out["detector_precision"] = det_used.get("precision")
        out["detector_max_conf_diff"] = det_used.get("max_conf_diff")
        if out["detector_recall"] is not None:
            parts.append(
                f"det R/P {float(out['detector_recall']):.2f}/"
                f"{float(out['detector_precision'] or 0):.2f}"
            )
    if top1 is not None:
        out["classifier_top1"] = top1
        parts.append(f"top1 {float(top1):.2f}")
    if top5 is not None:
        out["classifier_top5"] = top5
        parts.append(f"top5 {float(top5):.2f}")
    out["text"] = ", ".join(parts) if parts else "fidelity report without agreement numbers"
    return out


# ------------------------------------------------------------------------------------------
# one matrix cell (runs in a child process)


@dataclass
class CellSpec:
    """One cell of the matrix, passed to the child as JSON."""

    pack: str
    images: list[str]
    device: str
    precision: str
    batch_size: int
    threads: int | None = None
    workers: int | None = None
    warmup: int = 1
    launched_at: float = 0.0

    def key(self) -> str:
        """Stable id used by `--compare` to pair cells across reports."""
        key = f"{self.device}/{self.precision}/b{self.batch_size}/t{self.threads or 'auto'}"
        return key if self.workers is None else f"{key}/w{self.workers}"


def _self_peak_rss_mb() -> float | None:
    """This process's peak RSS (psutil's peak_wset on Windows, getrusage elsewhere)."""
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # Linux reports KiB, macOS bytes.
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
    except ImportError:
        pass
    with contextlib.suppress(Exception):
        import psutil

        mem = psutil.Process().memory_info()
        return getattr(mem, "peak_wset", mem.rss) / 2**20
    return None


def _children_peak_rss_mb() -> float | None:
    """Largest peak RSS of any waited-for child (decode workers), where the OS reports it."""
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
    except ImportError:
        return None


def stage_seconds(timings: Mapping[str, Any]) -> dict[str, float]:
    """The pipeline's `stats["timings"]` folded into STAGES (decode and letterbox together,
    the checkpoint save left out: bench writes no predictions file)."""

    def get(k: str) -> float:
        try:
            return float(timings.get(k, 0.0) or 0.0)
        except (TypeError, ValueError):
            return 0.0

    return {
        "decode_letterbox": get("decode") + get("letterbox") + get("decode_letterbox"),
        "detector": get("detector"),
        "nms": get("nms"),
        "crop": get("crop"),
        "classifier": get("classifier"),
        "ensemble": get("ensemble"),
    }


def _pipeline_config(spec: CellSpec, images: Sequence[str]) -> Any:
    from edgenet.pipeline import PipelineConfig

    kw: dict[str, Any] = {
        "instances": [{"filepath": p} for p in images],
        "model": spec.pack,
        "device": spec.device,
        "precision": spec.precision,
        "threads": spec.threads,
        "batch_size": spec.batch_size,
        "handle_signals": False,
        "predictions_json": None,
        "workers": spec.workers,  # None: the pipeline's default for the device
    }
    return PipelineConfig(**kw)


def _summarise_predictions(preds: Sequence[Any]) -> dict[str, int]:
    return {
        "predictions": len(preds),
        "failures": sum(1 for p in preds if isinstance(p, dict) and p.get("failures")),
        "detections": sum(len(p.get("detections") or []) for p in preds if isinstance(p, dict)),
    }


def _cell_main(spec_path: str, out_path: str) -> int:
    """Child entry: load the models once, run the first image(s) (cold: start-up and the
    first run at each shape), then all images again (warm); write the result JSON."""
    spec = CellSpec(**json.loads(Path(spec_path).read_text(encoding="utf-8")))
    result: dict[str, Any] = {"key": spec.key()}
    try:
        from edgenet.pipeline import load_components, run_pipeline

        cold_cfg = _pipeline_config(spec, spec.images[: max(1, spec.warmup)])
        comps = load_components(cold_cfg)
        _, cold = run_pipeline(cold_cfg, comps)
        first_done = time.time()
        preds, warm = run_pipeline(_pipeline_config(spec, spec.images), comps)
        result.update(
            ok=True,
            model_load_s=float(getattr(comps, "load_seconds", 0.0)),
            first_image_s=(first_done - spec.launched_at) if spec.launched_at else None,
            cold_stages=stage_seconds(cold.get("timings", {})),
            wall_s=float(warm["wall_s"]),
            stages=stage_seconds(warm.get("timings", {})),
            counts=warm.get("counts", {}),
            workers=warm.get("workers"),
            images=len(spec.images),
            **_summarise_predictions(preds.get("predictions", [])),
        )
    except EdgenetError as exc:
        result.update(ok=False, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - one failing cell must not end the bench
        result.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    result["self_peak_rss_mb"] = _self_peak_rss_mb()
    result["children_peak_rss_mb"] = _children_peak_rss_mb()
    Path(out_path).write_text(json.dumps(result), encoding="utf-8")
    return 0


# ------------------------------------------------------------------------------------------
# the parent: run a cell, watch its memory


class TreeMonitor:
    """Polls a process tree's summed RSS (psutil) and per-process GPU memory (nvidia-smi)."""

    def __init__(self, pid: int, interval: float = 0.05, gpu: bool = False) -> None:
        self.pid = pid
        self.interval = interval
        self.gpu = gpu
        self.peak_rss_mb: float | None = None
        self.peak_gpu_mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> TreeMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        try:
            import psutil
        except ImportError:
            psutil = None  # type: ignore[assignment]
        last_gpu = 0.0
        while not self._stop.is_set():
            pids = [self.pid]
            if psutil is not None:
                try:
                    root = psutil.Process(self.pid)
                    procs = [root, *root.children(recursive=True)]
                    total = 0
                    for p in procs:
                        with contextlib.suppress(psutil.Error):
                            total += p.memory_info().rss
                    pids = [p.pid for p in procs]
                    mb = total / 2**20
                    self.peak_rss_mb = max(self.peak_rss_mb or 0.0, mb)
                except psutil.Error:
                    pass
            now = time.monotonic()
            if self.gpu and now - last_gpu > 0.5:
                last_gpu = now
                used = gpu_memory_mb(pids)
                if used is not None:
                    self.peak_gpu_mb = max(self.peak_gpu_mb or 0.0, used)
            self._stop.wait(self.interval)


def gpu_memory_mb(pids: Iterable[int]) -> float | None:
    """GPU memory used by these processes (NVIDIA only, via nvidia-smi), or None."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory",
             "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    want = set(pids)
    used = 0.0
    for line in out.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) in want:
            with contextlib.suppress(ValueError):
                used += float(parts[1])
    return used


def run_cell(spec: CellSpec, workdir: Path, timeout: float | None = None) -> dict[str, Any]:
    """Run one cell in a fresh interpreter; return the child's result plus the tree's peaks."""
    workdir.mkdir(parents=True, exist_ok=True)
    tag = spec.key().replace("/", "_")
    spec_path = workdir / f"{tag}.spec.json"
    out_path = workdir / f"{tag}.result.json"
    out_path.unlink(missing_ok=True)
    spec.launched_at = time.time()
    spec_path.write_text(json.dumps(spec.__dict__), encoding="utf-8")
    cmd = [sys.executable, "-m", "edgenet.bench", "_cell", str(spec_path), str(out_path)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with TreeMonitor(proc.pid, gpu=spec.device in ("cuda", "tensorrt", "auto")) as mon:
        try:
            log, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            log, _ = proc.communicate()
    process_s = time.perf_counter() - t0
    result: dict[str, Any]
    try:
        result = json.loads(out_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        tail = (log or "").strip().splitlines()[-5:]
        result = {"key": spec.key(), "ok": False,
                  "error": f"cell process exited {proc.returncode}: " + " | ".join(tail)}
    result.update(
        device=spec.device, precision=spec.precision, batch_size=spec.batch_size,
        threads=spec.threads, process_s=process_s, peak_rss_tree_mb=mon.peak_rss_mb,
        peak_gpu_mb=mon.peak_gpu_mb,
    )
    if result.get("ok"):
        n = max(int(result.get("images", 0)), 1)
        wall = max(float(result["wall_s"]), 1e-9)
        result["images_per_s"] = n / wall
        result["stage_ms_per_image"] = {
            s: 1000.0 * float(result["stages"].get(s, 0.0)) / n for s in STAGES
        }
    return result


# ------------------------------------------------------------------------------------------
# the matrix


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
    info = _load_info(cfg.pack)
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
                if precision not in variants:
                    cell = {"key": spec.key(), "device": device, "precision": precision,
                            "batch_size": bs, "threads": cfg.threads, "ok": False,
                            "error": f"the pack has no {precision} variant "
                                     f"(has {', '.join(sorted(variants))})"}
                else:
                    cell = run_cell(spec, workdir, cfg.cell_timeout)
                cell["fidelity"] = fidelity.get(precision, {}).get("text", "")
                report["cells"].append(cell)
                say(_cell_line(cell))
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


def floor_estimate(report: Mapping[str, Any], costs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Seconds per image the measured peaks allow: FLOPs / peak, per model, for the fp32
    MatMul peak (`<role>_s`) and the fp32 3x3 Conv peak (`<role>_s_conv`)."""
    peaks = report.get("peak") or {}
    mm = (peaks.get("onnxruntime_fp32") or {}).get("best_gflops")
    conv = (peaks.get("onnxruntime_conv") or {}).get("best_gflops")
    if not mm or not costs:
        return {}
    out: dict[str, Any] = {"peak_gflops": mm, "conv_peak_gflops": conv}
    for name, cost in costs.items():
        if isinstance(cost, dict) and cost.get("flops"):
            out[f"{name}_s"] = cost["flops"] / 1e9 / mm
            if conv:
                out[f"{name}_s_conv"] = cost["flops"] / 1e9 / conv
    return out


def pack_costs(pack: Path) -> dict[str, Any]:
    """FLOPs/bytes of the pack's fp32 detector (1280x960) and classifier (one 480x480 crop);
    empty when `onnx` is not installed."""
    try:
        from edgenet import flops
    except ImportError:  # pragma: no cover
        return {}
    info = _load_info(pack)
    out: dict[str, Any] = {}
    for role in ("detector", "classifier"):
        name = info.get(role)
        if not isinstance(name, str) or not (pack / name).is_file():
            continue
        try:
            shapes = flops.input_shape_for(pack / name, role)
            out[role] = flops.count_model(pack / name, shapes).to_dict()
        except ImportError:
            return {}
        except Exception as exc:  # noqa: BLE001 - costs are informative only
            out[role] = {"error": str(exc)}
    return out


# ------------------------------------------------------------------------------------------
# outputs


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _cell_line(cell: Mapping[str, Any]) -> str:
    if not cell.get("ok"):
        return f"  {cell['key']}: FAILED {cell.get('error', '')}"
    st = cell["stage_ms_per_image"]
    stages = ", ".join(f"{STAGE_LABELS[s]} {st[s]:.0f}" for s in STAGES)
    return (
        f"  {cell['key']}: {cell['images_per_s']:.3f} images/s; ms/image: {stages}; "
        f"peak RSS {_fmt(cell.get('peak_rss_tree_mb') or cell.get('self_peak_rss_mb'), 0)} MB"
        + (f"; fidelity vs fp32: {cell['fidelity']}" if cell.get("fidelity") else "")
    )


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: machine, peak and floor, then one row per cell."""
    m = report["machine"]
    lines = [
        f"# edgenet bench ({report['created']})",
        "",
        f"- machine: {m['cpu']}, {m.get('usable_cores', m['logical_cores'])} usable cores"
        f" ({m['logical_cores']} logical), {m.get('memory_gb', '?')} GB, {m['platform']}",
        f"- CPU features: {', '.join(m.get('cpu_flags') or []) or '-'}",
        f"- onnxruntime {m['onnxruntime']} (providers: {', '.join(m['providers'])}), "
        f"numpy {m['numpy']}, Python {m['python']}, edgenet {m['edgenet']}",
    ]
    if m.get("gpus"):
        lines.append("- GPUs: " + "; ".join(f"{g['name']} {g['memory']}" for g in m["gpus"]))
    pk = report["pack"]
    lines.append(
        f"- pack: {pk['path']} (version {pk.get('version')}, type {pk.get('type')}, "
        f"variants {', '.join(pk.get('variants') or [])}"
        + (", SYNTHETIC weights" if pk.get("synthetic") else "") + ")"
    )
    im = report["images"]
    sizes = ", ".join(f"{k} x{v}" for k, v in im["sizes"].items())
    lines.append(f"- images: {im['count']} ({im['source']}; {sizes})")
    lines.append(f"- threads: {report.get('threads') or 'onnxruntime default'}; decode workers:"
                 f" {'pipeline default' if report.get('workers') is None else report['workers']}")
    peak = report.get("peak") or {}
    if peak:
        o = peak.get("onnxruntime_fp32", {})
        n = peak.get("numpy_fp32", {})
        i8 = peak.get("onnxruntime_int8", {})
        cv = peak.get("onnxruntime_conv", {})
        lines.append(
            f"- matmul peak (n={o.get('n')}): onnxruntime fp32 {_fmt(o.get('best_gflops'))} "
            f"GFLOP/s ({_fmt(o.get('gflops_per_cpu_second'))} per CPU-second: the rate "
            f"while running, unaffected by other jobs), numpy fp32 "
            f"{_fmt(n.get('best_gflops'))} GFLOP/s"
            + (f", onnxruntime int8 {_fmt(i8.get('best_gflops'))} GOP/s" if i8 else "")
            + (f"; onnxruntime fp32 3x3 conv {_fmt(cv.get('best_gflops'))} GFLOP/s" if cv
               else "")
        )
    costs = report.get("costs") or {}
    floor = report.get("floor") or {}
    for role in ("detector", "classifier"):
        c = costs.get(role)
        if isinstance(c, dict) and c.get("flops"):
            shape = next(iter(c["input_shapes"].values()))
            fl, flc = floor.get(f"{role}_s"), floor.get(f"{role}_s_conv")
            lines.append(
                f"- {role}: {c['flops'] / 1e9:.1f} GFLOPs at {shape}, weights "
                f"{c['weight_bytes'] / 1e6:.0f} MB"
                + (f"; floor {fl * 1000:.0f} ms at the fp32 matmul peak" if fl else "")
                + (f", {flc * 1000:.0f} ms at the conv peak" if flc else "")
            )
    lines += [
        "",
        "Stage columns are milliseconds of work per image (summed over the run; stages that "
        "overlap can add up to more than the wall time). images/s excludes session start-up; "
        "'first' is process start to the first image done.",
        "",
        "| device | precision | batch | images/s | first (s) | "
        + " | ".join(STAGE_LABELS[s] for s in STAGES)
        + " | peak RSS (MB) | GPU (MB) | fidelity vs fp32 |",
        "|" + "---|" * (5 + len(STAGES) + 3),
    ]
    for c in report["cells"]:
        head = f"| {c['device']} | {c['precision']} | {c['batch_size']} | "
        if not c.get("ok"):
            lines.append(head + "failed | - | " + " | ".join("-" for _ in STAGES)
                         + f" | - | - | {c.get('error', '')[:120]} |")
            continue
        st = c["stage_ms_per_image"]
        rss = c.get("peak_rss_tree_mb") or c.get("self_peak_rss_mb")
        lines.append(
            head + f"{c['images_per_s']:.3f} | {_fmt(c.get('first_image_s'), 2)} | "
            + " | ".join(f"{st[s]:.0f}" for s in STAGES)
            + f" | {_fmt(rss, 0)} | {_fmt(c.get('peak_gpu_mb'), 0)} | {c.get('fidelity', '')} |"
        )
    return "\n".join(lines) + "\n"


def _bar_rows(report: Mapping[str, Any]) -> list[tuple[str, dict[str, float]]]:
    rows = []
    for c in report["cells"]:
        if c.get("ok"):
            label = f"{c['device']} {c['precision']} b{c['batch_size']}"
            rows.append((label, {s: float(c["stage_ms_per_image"][s]) for s in STAGES}))
    return rows


def render_chart(report: Mapping[str, Any], path: Path) -> str:
    """Stacked horizontal bars of per-image stage times per cell. Returns the renderer used."""
    rows = _bar_rows(report)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        render_chart_pil(rows, path, title=_chart_title(report))
        return "pil"
    fig, ax = plt.subplots(figsize=(10, 1.9 + 0.5 * max(len(rows), 1)))
    for y, (_, vals) in enumerate(rows):
        left = 0.0
        for s in STAGES:
            colour = tuple(ch / 255 for ch in STAGE_COLOURS[s])
            ax.barh(y, vals[s], left=left, color=colour,
                    label=STAGE_LABELS[s] if y == 0 else None)
            left += vals[s]
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("milliseconds of work per image")
    ax.set_title(_chart_title(report))
    if rows:  # below the axis, so it never hides a bar
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), fontsize="small",
                  ncols=len(STAGES), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return "matplotlib"


def _chart_title(report: Mapping[str, Any]) -> str:
    m = report["machine"]
    return f"edgenet bench: stage time per image ({m['cpu']}, ORT {m['onnxruntime']})"


def render_chart_pil(rows: Sequence[tuple[str, Mapping[str, float]]], path: Path,
                     title: str = "stage time per image") -> None:
    """A tiny stacked-bar renderer on PIL, for installs without matplotlib."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    width, label_w, bar_h, gap, top = 1000, 170, 22, 10, 40
    legend_h = 30
    height = top + max(len(rows), 1) * (bar_h + gap) + 40 + legend_h
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 10), title, fill="black", font=font)
    total_max = max((sum(v.values()) for _, v in rows), default=0.0) or 1.0
    right = 80  # room for the total printed after the longest bar
    scale = (width - label_w - right) / total_max
    for i, (label, vals) in enumerate(rows):
        y = top + i * (bar_h + gap)
        d.text((10, y + 5), label, fill="black", font=font)
        x = float(label_w)
        for s in STAGES:
            w = vals.get(s, 0.0) * scale
            if w > 0:
                d.rectangle([x, y, x + w, y + bar_h], fill=STAGE_COLOURS[s])
            x += w
        d.text((x + 4, y + 5), f"{sum(vals.values()):.0f} ms", fill="black", font=font)
    axis_y = top + max(len(rows), 1) * (bar_h + gap)
    d.line([label_w, axis_y, width - right, axis_y], fill="black")
    for k in range(6):
        v = total_max * k / 5
        x = label_w + v * scale
        d.line([x, axis_y, x, axis_y + 4], fill="black")
        d.text((x - 10, axis_y + 6), f"{v:.0f}", fill="black", font=font)
    d.text((width // 2 - 60, axis_y + 18), "ms of work per image", fill="black", font=font)
    lx, ly = 10, height - legend_h + 5
    for s in STAGES:
        d.rectangle([lx, ly, lx + 14, ly + 14], fill=STAGE_COLOURS[s])
        d.text((lx + 18, ly + 2), STAGE_LABELS[s], fill="black", font=font)
        lx += 28 + 8 * len(STAGE_LABELS[s])
    img.save(path)


def write_outputs(report: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """bench.json, bench.md and bench.png in `out_dir` (created)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "bench.json", "md": out_dir / "bench.md",
             "png": out_dir / "bench.png"}
    paths["json"].write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    paths["md"].write_text(render_markdown(report), encoding="utf-8")
    render_chart(report, paths["png"])
    return paths


def load_report(path: str | Path) -> dict[str, Any]:
    """An earlier bench.json, or an InputError naming the file (checked before any run)."""
    try:
        old = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read an earlier bench report: {exc}", path=path,
                         fix="pass a bench.json written by `edgenet bench`") from exc
    if not isinstance(old, dict) or not isinstance(old.get("cells"), list):
        raise InputError("not an edgenet bench report (no 'cells')", path=path,
                         fix="pass a bench.json written by `edgenet bench`")
    return old


def compare_reports(report: Mapping[str, Any], old_paths: Sequence[Path]) -> str:
    """Ratios new/old of images/s and of each stage's time, per matching cell."""
    lines = []
    for old_path in old_paths:
        old = load_report(old_path)
        by_key = {_cmp_key(c): c for c in old["cells"] if c.get("ok")}
        lines.append(f"compared with {old_path} ({old.get('created', '?')}, "
                     f"{(old.get('machine') or {}).get('cpu', '?')}):")
        lines.append("| cell | images/s old | images/s new | speed-up | "
                     + " | ".join(f"{STAGE_LABELS[s]} new/old" for s in STAGES) + " |")
        lines.append("|" + "---|" * (4 + len(STAGES)))
        for c in report["cells"]:
            o = by_key.get(_cmp_key(c))
            if not c.get("ok") or o is None:
                continue
            ratios = []
            for s in STAGES:
                a, b = c["stage_ms_per_image"][s], o["stage_ms_per_image"][s]
                ratios.append(f"{a / b:.2f}" if b > 0 else "-")
            lines.append(
                f"| {c['key']} | {o['images_per_s']:.3f} | {c['images_per_s']:.3f} | "
                f"{c['images_per_s'] / o['images_per_s']:.2f}x | " + " | ".join(ratios) + " |"
            )
    return "\n".join(lines) + "\n"


def _cmp_key(cell: Mapping[str, Any]) -> tuple[str, str, int]:
    return (str(cell.get("device")), str(cell.get("precision")), int(cell.get("batch_size", 0)))


# ------------------------------------------------------------------------------------------
# the command


def _split(value: str, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise InputError(f"empty {what} list", fix=f"pass e.g. --{what} a,b")
    return items


def bench(
    model: Path,
    images: Path | None = None,
    devices: str = "cpu",
    precisions: str = "fp32",
    batch_sizes: str = "1",
    threads: int | None = None,
    out: Path = Path("bench-out"),
    workers: int | None = None,
    compare: Sequence[Path] = (),
    num_images: int = 8,
    peak: bool = True,
    flops: bool = True,
    quiet: bool = False,
) -> dict[str, Any]:
    """Library form of `edgenet bench`; returns the report (also written under `out`)."""
    say = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    pack = Path(model).expanduser()
    from edgenet import providers

    devs = _split(devices, "devices")
    for d in devs:
        providers.resolve_providers(d)  # unknown / unavailable device: clear error up front
    precs = _split(precisions, "precisions")
    for p in precs:
        if p not in providers.PRECISIONS:
            raise InputError(f"unknown precision {p!r}",
                             fix=f"use --precisions from {', '.join(providers.PRECISIONS)}")
    try:
        sizes = [int(b) for b in _split(batch_sizes, "batch-sizes")]
    except ValueError as exc:
        raise InputError(f"--batch-sizes must be integers, got {batch_sizes!r}",
                         fix="e.g. --batch-sizes 1,4") from exc
    if any(b < 1 for b in sizes):
        raise InputError("--batch-sizes must be >= 1", fix="e.g. --batch-sizes 1,4")
    _load_info(pack)
    for old in compare:
        load_report(old)  # a typo in --compare should not cost a whole bench run
    out = Path(out)
    work = out / "work"
    if images is None:
        image_paths = generate_images(work / "images", count=num_images)
        source = f"generated by edgenet bench ({num_images} synthetic camera-trap frames)"
    else:
        image_paths = list_images(images)
        source = str(images)
    costs = pack_costs(pack) if flops else {}
    cfg = BenchConfig(pack=pack, images=image_paths, devices=devs, precisions=precs,
                      batch_sizes=sizes, threads=threads, workers=workers,
                      images_source=source,
                      measure_peak=peak, extra={"costs": costs})
    report = run_matrix(cfg, work, log=say)
    paths = write_outputs(report, out)
    print(render_markdown(report))
    if compare:
        print(compare_reports(report, [Path(c) for c in compare]))
    say("wrote " + ", ".join(str(p) for p in paths.values()))
    return report


def default_bench_pack() -> tuple[Path, str]:
    """The pack `edgenet bench` measures without --model: the installed default pack (as
    `edgenet run`), else the tiny synthetic demo pack that ships with edgenet, so that a fresh
    install can run the benchmark at once (its numbers are the pipeline's, not SpeciesNet's)."""
    from edgenet.demo import demo_pack_dir
    from edgenet.pack import default_pack_dir

    installed = Path(default_pack_dir())
    if (installed / "info.json").is_file():
        return installed, f"the default pack {installed}"
    return demo_pack_dir(), ("the tiny synthetic demo pack (no pack installed; pass --model "
                             "for a real or full-size one)")


def bench_command(
    model: Annotated[Path | None, typer.Option(
        "--model", help="model pack folder (default: the installed default pack, else the "
                        "tiny synthetic demo pack)")] = None,
    images: Annotated[Path | None, typer.Option(
        "--images", help="folder of images (default: generated camera-trap-like frames)")
    ] = None,
    devices: Annotated[str, typer.Option(help="comma-separated, e.g. cpu,cuda")] = "cpu",
    precisions: Annotated[str, typer.Option(help="comma-separated: fp32,fp16,int8")] = "fp32",
    batch_sizes: Annotated[str, typer.Option(help="comma-separated, e.g. 1,4")] = "1",
    threads: Annotated[int | None, typer.Option(help="onnxruntime intra-op threads")] = None,
    workers: Annotated[int | None, typer.Option(
        help="decode worker processes (default: the pipeline's)")] = None,
    out: Annotated[Path, typer.Option(help="output folder")] = Path("bench-out"),
    compare: Annotated[list[Path] | None, typer.Option(
        help="earlier bench.json to compare with (repeatable)")] = None,
    num_images: Annotated[int, typer.Option(help="how many images to generate")] = 8,
    peak: Annotated[bool, typer.Option(help="measure the matmul peak")] = True,
    flops: Annotated[bool, typer.Option(help="count model FLOPs (needs onnx)")] = True,
    quiet: Annotated[bool, typer.Option(help="no progress lines")] = False,
) -> None:
    """Benchmark a pack over devices x precisions x batch sizes: per-stage time, images/s,
    peak memory; writes bench.json, bench.md and bench.png."""
    if model is None:
        model, what = default_bench_pack()
        if not quiet:
            typer.echo(f"benchmarking {what}", err=True)
    try:
        bench(model, images, devices, precisions, batch_sizes, threads, out, workers,
              compare or [], num_images, peak, flops, quiet)
    except EdgenetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None


def bench_app() -> typer.Typer:
    """A one-command Typer app, for `app.add_typer(bench_app(), name="bench")` mounting."""
    app = typer.Typer(add_completion=False)
    app.command(name="bench")(bench_command)
    return app


def _main(argv: Sequence[str]) -> int:
    if len(argv) == 3 and argv[0] == "_cell":
        return _cell_main(argv[1], argv[2])
    if argv and argv[0] == "peak":
        threads = int(argv[1]) if len(argv) > 1 else None
        res = {"onnxruntime_fp32": measure_matmul_peak(threads),
               "onnxruntime_int8": measure_matmul_peak(threads, kind="int8"),
               "onnxruntime_conv": measure_matmul_peak(threads, kind="conv"),
               "numpy_fp32": measure_numpy_peak()}
        print(json.dumps(res, indent=2))
        return 0
    bench_app()(args=list(argv), prog_name="edgenet bench")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
