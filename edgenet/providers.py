"""The one place that maps `--device` / `--precision` to onnxruntime providers and sessions.

Why one place: provider tuning (cuDNN heuristic search, TensorRT engine cache, DirectML's
session constraints, CPU threads) must be identical for every model and every command
(`run`, `bench`, `doctor`), and a user asking for a device that is not installed must get
one clear message naming the package to install, not an onnxruntime warning followed by a
silent CPU run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnxruntime as ort

from edgenet.errors import EdgenetError, PackError, warn

T = TypeVar("T")

# --device value -> onnxruntime provider name.
DEVICE_PROVIDERS: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "dml": "DmlExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}
DEVICES: tuple[str, ...] = ("auto", *DEVICE_PROVIDERS)

# What `auto` tries, best first. TensorRT is never picked automatically: its first engine
# build takes minutes per input shape, which would look like a hang to a new user.
AUTO_ORDER: tuple[str, ...] = ("cuda", "dml", "openvino", "coreml", "cpu")

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8", "bf16")

# bf16 has no model files of its own: it runs the pack's fp32 graphs, which OpenVINO computes in
# bfloat16 (its INFERENCE_PRECISION_HINT) on CPUs with AVX512_BF16 or AMX. onnxruntime's own CPU
# provider has no bf16 convolutions, so no other device offers it. Why not a bf16 ONNX file:
# nothing here would run it, and the hint keeps one set of files per pack.
BF16_DEVICES: tuple[str, ...] = ("openvino",)
BF16_CPU_FLAGS: tuple[str, ...] = ("avx512_bf16", "amx_bf16")

# How to get each provider (onnxruntime ships one provider family per wheel).
INSTALL_HINTS: dict[str, str] = {
    "cpu": "pip install onnxruntime",
    "cuda": (
        "pip install 'edgenet[gpu]' (onnxruntime-gpu; then `pip uninstall onnxruntime` if both "
        "are installed, they share one module) and an NVIDIA driver with CUDA 12 / cuDNN 9"
    ),
    "tensorrt": (
        "pip install 'edgenet[gpu]' tensorrt (onnxruntime-gpu plus the TensorRT libraries), or "
        "use --device cuda"
    ),
    "dml": "pip uninstall onnxruntime && pip install onnxruntime-directml (Windows only)",
    "openvino": (
        "pip uninstall onnxruntime && pip install onnxruntime-openvino (x86 CPUs, Intel GPUs)"
    ),
    "coreml": "use the standard onnxruntime wheel on macOS (CoreML is built in there)",
}

# Providers that keep tensors in CUDA memory, where I/O binding saves copies.
_CUDA_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


# Execution providers on which every new input shape is expensive (kernel selection, plan or
# engine building per shape). Measured on an H100 with onnxruntime-gpu 1.31 and cuDNN 9
# (benchmarks/NOTES.md, entry 7): the full classifier's first run at a new batch size took
# 3.8 s (fp32) to 9.4 s (fp16), every later run at that size 12-17 ms; crops arrive in batches
# of every size from 1 to --batch-size, so each size paid that once. On these providers the
# models run fixed-size batches (`run_fixed_batches`); on the CPU a new shape costs nothing.
SHAPE_SENSITIVE_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider",
                             "DmlExecutionProvider", "ROCMExecutionProvider",
                             "MIGraphXExecutionProvider", "CoreMLExecutionProvider")


def is_shape_sensitive(sess: Any) -> bool:
    """True when SESS runs on a provider that pays for every new input shape."""
    try:
        return sess.get_providers()[0] in SHAPE_SENSITIVE_PROVIDERS
    except (AttributeError, IndexError):
        return False


def run_fixed_batches(run: Any, x: np.ndarray, size: int) -> np.ndarray:
    """RUN (array -> array, row for row) over X in batches of exactly SIZE rows.

    The last batch is padded with zero rows, whose outputs are dropped: one input shape per
    image size reaches the device. Rows are independent in inference (no batch statistics),
    so a row's output does not depend on its batch-mates.
    """
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    outs = []
    for start in range(0, len(x), size):
        chunk = x[start:start + size]
        n = len(chunk)
        if n < size:  # one allocation: a detector batch is ~120-160 MB at 1280 px
            padded = np.zeros((size, *chunk.shape[1:]), dtype=chunk.dtype)
            padded[:n] = chunk
            chunk = padded
        outs.append(np.asarray(run(chunk))[:n])
    if len(outs) == 1:
        return outs[0]
    return np.concatenate(outs) if outs else np.asarray(run(x))


def cache_dir() -> Path:
    """edgenet's cache root: `$EDGENET_HOME`, else `~/.cache/edgenet` (as the pack default)."""
    home = os.environ.get("EDGENET_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "edgenet"


def tensorrt_cache_dir() -> Path:
    """Where TensorRT engines and timing caches are kept, so only the first run builds them."""
    return cache_dir() / "tensorrt"


def cpuinfo_flags_line() -> str:
    """The CPU's ISA flags line from /proc/cpuinfo ("flags : ..." on x86, "Features : ..." on
    ARM), stripped; "" where there is none (macOS, Windows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            return next((ln for ln in fh if ln.startswith(("flags", "Features"))), "").strip()
    except OSError:
        return ""


def available_devices() -> dict[str, bool]:
    """Which `--device` values this onnxruntime build offers (compiled in, not yet loaded).

    A provider listed here can still fail to load (e.g. CUDA libraries missing);
    `make_session` checks the session it built and reports that case.
    """
    have = set(ort.get_available_providers())
    return {dev: (prov in have) or dev == "cpu" for dev, prov in DEVICE_PROVIDERS.items()}


def _ort_version() -> tuple[int, int]:
    parts = ort.__version__.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (ValueError, IndexError):  # pragma: no cover - odd dev builds
        return (0, 0)


def cuda_option_overrides() -> dict[str, str]:
    """CUDA execution-provider options from `EDGENET_CUDA_OPTIONS` ("key=value,key=value").

    Why an environment variable: which of onnxruntime's CUDA options pay off (`prefer_nhwc`,
    `cudnn_conv_algo_search=EXHAUSTIVE`, `use_tf32`, ...) depends on the GPU and the build,
    and is measured on lent machines with `benchmarks/gpu_probe.py` before any becomes a
    default; this lets a whole `edgenet run`/`bench` try one without a code change. Values
    are passed to onnxruntime as given (it rejects unknown keys when the session is made).
    """
    raw = os.environ.get("EDGENET_CUDA_OPTIONS", "").strip()
    options: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise EdgenetError(
                f"EDGENET_CUDA_OPTIONS: {item!r} is not key=value",
                fix="write it as e.g. EDGENET_CUDA_OPTIONS=prefer_nhwc=1,use_tf32=0",
            )
        if key.strip() == "enable_cuda_graph" and value.strip() != "0":
            # A graph replays the device addresses of the run it captured, while the
            # pipeline binds new buffers for every run: silently wrong outputs.
            raise EdgenetError(
                "EDGENET_CUDA_OPTIONS cannot turn on enable_cuda_graph: the pipeline binds "
                "new buffers for every run, which a captured graph would not read",
                fix="use EDGENET_CUDA_GRAPH=1 (the classifier's runs at fixed buffers, "
                    "edgenet/cuda_graph.py)",
            )
        options[key.strip()] = value.strip()
    return options


def _provider_entry(device: str, precision: str) -> tuple[str, dict[str, Any]]:
    """(provider name, options) for one device, with edgenet's tuning."""
    name = DEVICE_PROVIDERS[device]
    if device == "cuda":
        # Exhaustive cuDNN search gives bimodal latencies and slow first batches per shape;
        # the heuristic picks near-best kernels immediately.
        return name, {"cudnn_conv_algo_search": "HEURISTIC", **cuda_option_overrides()}
    if device == "tensorrt":
        cache = str(tensorrt_cache_dir())
        return name, {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": cache,
            "trt_fp16_enable": precision == "fp16",
        }
    if device == "openvino" and precision == "bf16":
        # On the CPU only: OpenVINO's GPU plugin computes in fp16 by default anyway.
        hint = {"CPU": {"INFERENCE_PRECISION_HINT": "bf16"}}
        return name, {"device_type": "CPU", "load_config": json.dumps(hint)}
    if device == "coreml" and _ort_version() >= (1, 20):
        # MLProgram covers more operators than the legacy NeuralNetwork format.
        return name, {"ModelFormat": "MLProgram", "MLComputeUnits": "ALL"}
    return name, {}


def _check_device(device: str) -> str:
    dev = device.strip().lower()
    if dev not in DEVICES:
        raise EdgenetError(
            f"unknown device {device!r}",
            fix=f"use --device with one of: {', '.join(DEVICES)}",
        )
    return dev


def _check_precision(precision: str) -> str:
    prec = precision.strip().lower()
    if prec not in PRECISIONS:
        raise EdgenetError(
            f"unknown precision {precision!r}",
            fix=f"use --precision with one of: {', '.join(PRECISIONS)}",
        )
    return prec


def _unavailable(device: str, asked: str | None = None,
                 instead: str = "--device auto") -> EdgenetError:
    """DEVICE's provider is not in this onnxruntime build; ASKED is the flag that needs it."""
    have = ", ".join(d for d, ok in available_devices().items() if ok)
    return EdgenetError(
        f"{asked or '--device ' + device} needs onnxruntime's {DEVICE_PROVIDERS[device]}, "
        f"which this onnxruntime {ort.__version__} does not provide (available: {have})",
        fix=f"{INSTALL_HINTS[device]}; or use {instead}",
    )


def _bf16_device(device: str, avail: Mapping[str, bool]) -> str:
    """The device a bf16 run uses (`BF16_DEVICES`), or an `EdgenetError` saying what to do."""
    if device not in ("auto", *BF16_DEVICES):
        raise EdgenetError(
            f"--precision bf16 runs through OpenVINO, not --device {device} (onnxruntime's "
            "other providers have no bfloat16 convolutions)",
            fix="use --device openvino (or auto) with onnxruntime-openvino installed, or "
            "--precision fp32 / int8",
        )
    if not avail["openvino"]:
        raise _unavailable("openvino", "--precision bf16", instead="--precision fp32 / int8")
    from edgenet.run_defaults import cpu_flags

    flags = cpu_flags()
    # Unknown flags (no /proc/cpuinfo, e.g. Windows): OpenVINO itself decides.
    if flags and not set(BF16_CPU_FLAGS) & set(flags):
        raise EdgenetError(
            "--precision bf16 needs a CPU with bfloat16 instructions (AVX512_BF16 or AMX); "
            "this one has neither",
            fix="use --precision fp32, or int8 (see the pack's fidelity report)",
        )
    return "openvino"


def resolve_providers(device: str = "auto", precision: str = "fp32") -> list[tuple[str, dict]]:
    """Providers (name, options) for `device`, best first, always ending with the CPU.

    `auto` picks the first available of cuda > dml > openvino > coreml > cpu. An explicit
    device that this onnxruntime build lacks raises `EdgenetError` naming the package.
    TensorRT is followed by CUDA (when present) for the operators TensorRT rejects.
    """
    dev = _check_device(device)
    prec = _check_precision(precision)
    avail = available_devices()
    if prec == "bf16":
        dev = _bf16_device(dev, avail)
    elif dev == "auto":
        dev = next(d for d in AUTO_ORDER if avail[d])
    elif not avail[dev]:
        raise _unavailable(dev)
    chosen = [dev]
    if dev == "tensorrt" and avail["cuda"]:
        chosen.append("cuda")
    if dev != "cpu":
        chosen.append("cpu")
    return [_provider_entry(d, prec) for d in chosen]


def _preload_gpu_libraries() -> None:
    """Let onnxruntime-gpu find CUDA/cuDNN from pip's nvidia-* wheels (ORT >= 1.21)."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception:  # noqa: BLE001 - best effort; the session check below reports failure
        pass


def make_session(
    path: str | os.PathLike[str],
    device: str = "auto",
    threads: int | None = None,
    precision: str = "fp32",
    cpu_arena: bool = False,
    cache: bool = True,
    cuda_graph: bool = False,
) -> ort.InferenceSession:
    """An onnxruntime session on `device`, tuned, or an `EdgenetError` saying why not.

    Full graph optimisation, `threads` intra-op threads when given, errors-only logging;
    onnxruntime's CPU memory arena only with `cpu_arena` (`EDGENET_CPU_MEM_ARENA=0/1` wins).
    `cache=False` neither reads nor writes `graph_cache` entries (a throwaway model's).
    `cuda_graph=True` turns on CUDA graph capture where CUDA runs first (`edgenet.cuda_graph`:
    such a session must only be run through its `FixedBindingRunner`).
    When an explicitly requested accelerator fails to load (onnxruntime would silently
    fall back to the CPU), this raises instead: a user who asked for a GPU must know.
    """
    model_path = Path(path)
    if not model_path.is_file():
        raise PackError(
            "ONNX model file not found",
            path=model_path,
            fix="check the model pack folder (`edgenet models pull` or `edgenet convert pack`)",
        )
    dev = _check_device(device)
    providers = resolve_providers(dev, precision)
    if cuda_graph:
        from edgenet.cuda_graph import graph_options

        providers = graph_options(providers)
    names = [name for name, _ in providers]
    if threads is not None and threads < 1:
        raise EdgenetError(f"threads must be >= 1, got {threads}", fix="pass --threads 1 or more")

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads is not None:
        so.intra_op_num_threads = int(threads)
    arena_env = os.environ.get("EDGENET_CPU_MEM_ARENA", "")
    if arena_env in ("0", "1"):
        cpu_arena = arena_env == "1"
    if not cpu_arena:
        # The CPU arena keeps its high-water mark of activations for the whole run: at batch 8
        # (1280-input detector), measured on the full-size pack (3 images): peak RSS 1.85 GB
        # without vs 2.41 GB with it, same predictions. At batch 1 the mark is small and the
        # arena saves the page faults of fresh buffers: ~0.5 s of a one-image run (NOTES.md,
        # entry 8), so the pipeline asks for it then.
        so.enable_cpu_mem_arena = False
    if "DmlExecutionProvider" in names:
        # DirectML does not support memory patterns or parallel execution.
        so.enable_mem_pattern = False
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if any(n in _CUDA_PROVIDERS for n in names):
        _preload_gpu_libraries()
    if "TensorrtExecutionProvider" in names:
        tensorrt_cache_dir().mkdir(parents=True, exist_ok=True)

    from edgenet import graph_cache

    sess = None
    mapped = graph_cache.mapped_copy(model_path, names) if cache else None
    if mapped is not None:
        try:
            sess = ort.InferenceSession(str(mapped), sess_options=so, providers=providers)
        except Exception:  # noqa: BLE001 - the copy never stops a run: load the original
            if not cuda_graph:  # else the capture may be what was refused, not the copy
                graph_cache.remove_entry(mapped)
    cached = (graph_cache.optimized_model_path(model_path, names)
              if sess is None and cache else None)
    if cached is not None and cached.is_file():
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            sess = ort.InferenceSession(str(cached), sess_options=so, providers=providers)
        except Exception:  # noqa: BLE001 - a bad cache entry never stops a run: rebuild it
            graph_cache.remove_entry(cached)
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if cached.is_file():  # it could not be deleted: optimise, but do not save
                cached = None
    if sess is None:
        # pending stays None where the cache is off or cannot be written: optimise every time
        pending = None if cached is None else graph_cache.begin_entry(model_path, cached, so)
        try:
            sess = ort.InferenceSession(str(model_path), sess_options=so, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types per failure
            if pending is not None:
                graph_cache.discard(pending)
            raise PackError(
                f"onnxruntime cannot load this model: {str(exc).strip().splitlines()[0][:300]}",
                path=model_path,
                fix="re-create it with `edgenet convert` or re-download the pack",
            ) from exc
        if pending is not None:
            graph_cache.commit(pending)
    bf16 = _check_precision(precision) == "bf16"
    if (dev not in ("auto", "cpu") or bf16) and names[0] not in sess.get_providers():
        raise EdgenetError(
            f"{names[0]} is installed but failed to initialise (the session fell back to "
            f"{', '.join(sess.get_providers())})",
            path=model_path,
            fix=(
                f"check the device's drivers and libraries "
                f"({INSTALL_HINTS[_device_of(names[0])]}); "
                "`edgenet doctor` shows what was found; or use "
                + ("--precision fp32" if bf16 else "--device cpu")
            ),
        )
    return sess


def _device_of(provider: str, default: str = "cpu") -> str:
    """The `--device` name of an onnxruntime provider name (DEFAULT for one edgenet lacks)."""
    return next((d for d, name in DEVICE_PROVIDERS.items() if name == provider), default)


def session_device(sess: ort.InferenceSession) -> str:
    """The `--device` name of the provider that actually runs the session's first node."""
    first = sess.get_providers()[0]
    return _device_of(first, default=first)


def describe_session(sess: ort.InferenceSession) -> str:
    """One line for logs, `doctor` and `bench`: providers (with options) and I/O shapes."""
    opts = sess.get_provider_options()
    shown = []
    for name in sess.get_providers():
        o = opts.get(name, {})
        keys = [
            k for k in ("cudnn_conv_algo_search", "prefer_nhwc", "use_tf32", "enable_cuda_graph",
                        "trt_fp16_enable", "trt_engine_cache_path", "device_type", "ModelFormat")
            if k in o
        ]
        extra = ", ".join(f"{k}={o[k]}" for k in keys)
        shown.append(f"{name}({extra})" if extra else name)

    def io(args: Sequence[Any]) -> str:
        return ", ".join(f"{a.name}:{a.type}{list(a.shape)}" for a in args)

    threads = ""
    so = sess.get_session_options()
    if so.intra_op_num_threads:
        threads = f"; threads {so.intra_op_num_threads}"
    return (
        f"providers {' > '.join(shown)}; inputs {io(sess.get_inputs())}; "
        f"outputs {io(sess.get_outputs())}{threads}"
    )


# How onnxruntime's GPU providers say a device allocation failed: the BFC arena ("Failed to
# allocate memory for requested buffer"), CUDA ("out of memory"), cuDNN/cuBLAS
# ("..._STATUS_ALLOC_FAILED"), DirectML ("E_OUTOFMEMORY", 0x8007000E).
_OUT_OF_MEMORY = re.compile(r"out of memory|failed to allocate|alloc_failed|e_outofmemory|"
                            r"8007000e", re.IGNORECASE)


def is_out_of_memory(err: BaseException) -> bool:
    """True when ERR is a provider's report that device memory ran out."""
    return bool(_OUT_OF_MEMORY.search(str(err)))


def halving_batch_on_oom(model: Any, attempt: Callable[[], T], role: str) -> T:
    """ATTEMPT() (a run of MODEL's session in batches of `model.fixed_batch` rows); when the
    device runs out of memory, halve `model.fixed_batch` and try again, down to one row.

    Why: the GPU defaults (batch 8 images of 1280x960, 8 crops of 480x480) peaked at 9.2 GB of
    an H100 in fp32 (benchmarks/NOTES.md entry 23); a laptop or Jetson-class GPU has less, and
    without this every batch of such a run would fail its images. The smaller size stays for
    the rest of the run (each new size costs one warm-up on the device). Predictions can differ
    in the last digits from a larger batch's with TF32 on (entry 20); they are not lost."""
    while True:
        try:
            return attempt()
        except Exception as err:
            size = getattr(model, "fixed_batch", None)
            if not size or size <= 1 or not is_out_of_memory(err):
                raise
            model.fixed_batch = size // 2
            warn(f"the {role} ran out of device memory at {size} rows per run; running "
                 f"{model.fixed_batch} at a time from now on (a smaller --batch-size avoids "
                 "the failed first try)")


def run_model_rows(model: Any, x: np.ndarray, role: str, nchw: bool) -> np.ndarray:
    """MODEL's output for the rows of X, what the detector's and the classifier's `infer`
    both do: X already in the model's input type goes to its session (`run_rows`); uint8
    pixels go through a second session on the same provider that scales them there
    (`onnx_writer.unit_float_model_bytes`, NCHW or NHWC; built once, kept on MODEL), the
    intermediate staying on the device (`run_chain_rows`). Both in runs of
    `model.fixed_batch` rows when set, halved if the device runs out of memory."""
    def attempt() -> np.ndarray:
        fixed = _run_fixed_binding(model, x)
        if fixed is not None:
            return fixed
        if x.dtype != np.uint8:
            return run_rows(model.session, model.input_name, model.output_name, x,
                            model.fixed_batch)
        if model._pixels_session is None:
            from edgenet.onnx_writer import unit_float_model_bytes

            model._pixels_session = session_like(model.session, unit_float_model_bytes(
                model.input_dtype == np.float16, nchw=nchw))
        return run_chain_rows(model._pixels_session, model.session, "pixels", "tensor",
                              model.input_name, model.output_name, x, model.fixed_batch)

    return halving_batch_on_oom(model, attempt, role)


def _run_fixed_binding(model: Any, x: np.ndarray) -> np.ndarray | None:
    """X through MODEL's fixed-binding runner (`EDGENET_CUDA_GRAPH=1`, `cuda_graph`), or None
    where MODEL does not run that way. An out-of-memory error goes to the batch halving; any
    other ends the mode for MODEL (`cuda_graph.give_up`) and returns None: plain runs follow."""
    from edgenet import cuda_graph

    runner = cuda_graph.runner_for(model, x)
    if runner is None:
        return None
    try:
        return run_fixed_batches(runner.run, x, model.fixed_batch)
    except Exception as err:
        if is_out_of_memory(err):
            raise
        cuda_graph.give_up(model, err)
        return None


def warm_up_in_background(sess: ort.InferenceSession, rows: int) -> threading.Thread | None:
    """`EDGENET_GPU_WARMUP=1`: on a shape-sensitive provider, run SESS once on zeros of ROWS
    rows on a daemon thread, so the provider's first run at that shape (kernel and algorithm
    selection: the classifier's took 5.0 s of a 9.0 s cold start on the H100, benchmarks/
    NOTES.md entry 23) overlaps the other model's build and first run instead of following
    them. onnxruntime sessions take concurrent runs, so a real run that starts meanwhile is
    correct; it waits on the same per-node state. Off by default: not yet measured on a GPU.
    Returns the thread (None when nothing runs); symbolic dims other than the batch are 1."""
    if os.environ.get("EDGENET_GPU_WARMUP") != "1" or not is_shape_sensitive(sess):
        return None
    inp = sess.get_inputs()[0]
    dims = [rows] + [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape[1:]]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    out = sess.get_outputs()[0].name

    def run() -> None:
        try:
            run_with_iobinding(sess, {inp.name: np.zeros(dims, dtype)}, [out])
        except Exception as err:  # noqa: BLE001 - a warm-up must never fail the run
            warn(f"warm-up run failed (the first real run pays instead): {err}")

    thread = threading.Thread(target=run, name="edgenet-warmup", daemon=True)
    thread.start()
    return thread


def run_rows(sess: ort.InferenceSession, input_name: str, output_name: str, x: np.ndarray,
             fixed_batch: int | None = None) -> np.ndarray:
    """OUTPUT_NAME of SESS for the rows of X (fed as INPUT_NAME): in one run, or in runs of
    exactly FIXED_BATCH rows when set (`run_fixed_batches`), bound on the GPU when it runs
    there (`run_with_iobinding`). What the detector and the classifier both do."""
    def run(rows: np.ndarray) -> np.ndarray:
        return run_with_iobinding(sess, {input_name: rows}, [output_name])[0]

    return run_fixed_batches(run, x, fixed_batch) if fixed_batch else run(x)


def session_like(sess: ort.InferenceSession, model_bytes: bytes) -> ort.InferenceSession:
    """A session for a small graph the runtime writes itself (MODEL_BYTES) on SESS's device
    and thread count: its providers with only their `device_id`, TensorRT left out (an engine
    build per input shape for a few elementwise nodes; CUDA runs them)."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    threads = sess.get_session_options().intra_op_num_threads
    if threads:
        so.intra_op_num_threads = threads
    opts = sess.get_provider_options()
    providers: list[Any] = []
    for name in sess.get_providers():
        if name == "TensorrtExecutionProvider":
            continue
        device_id = opts.get(name, {}).get("device_id")
        providers.append((name, {"device_id": device_id}) if device_id is not None else name)
    return ort.InferenceSession(model_bytes, sess_options=so, providers=providers)


# `EDGENET_GPU_SERIAL=1`: one device run at a time across the process's sessions (a lock
# around each CUDA/TensorRT run and the copy of its outputs). A measurement switch: on the
# H200 the detector's calls took ~3x their time alone inside the pipeline while the
# classifier's calls ran beside them (benchmarks/NOTES.md, entry 20), and whether the two
# sessions' streams slow each other more than taking turns would is what it tells. Off by
# default; not yet measured on a GPU.
_DEVICE_RUN_LOCK = threading.Lock()


def _device_run_turn() -> contextlib.AbstractContextManager[Any]:
    if os.environ.get("EDGENET_GPU_SERIAL") == "1":
        return _DEVICE_RUN_LOCK
    return contextlib.nullcontext()


def run_chain_rows(first: ort.InferenceSession, second: ort.InferenceSession, first_in: str,
                   first_out: str, second_in: str, second_out: str, x: np.ndarray,
                   fixed_batch: int | None = None) -> np.ndarray:
    """SECOND's SECOND_OUT for FIRST's FIRST_OUT of X (fed as FIRST_IN), in runs of exactly
    FIXED_BATCH rows when set. On CUDA/TensorRT the intermediate stays on the device (bound
    as FIRST's output, then as SECOND's input): X crosses to the device once and only the
    result comes back. Elsewhere: two plain runs."""
    def run(rows: np.ndarray) -> np.ndarray:
        if first.get_providers()[0] not in _CUDA_PROVIDERS:
            mid = first.run([first_out], {first_in: rows})[0]
            return second.run([second_out], {second_in: mid})[0]
        device_id = _device_id(first)
        host = np.ascontiguousarray(rows)  # copied to the device inside the run (no GIL)
        to_mid = first.io_binding()
        to_mid.bind_cpu_input(first_in, host)
        to_mid.bind_output(first_out, "cuda", device_id)
        with _device_run_turn():
            first.run_with_iobinding(to_mid)
            mid = to_mid.get_outputs()[0]
            to_out = second.io_binding()
            to_out.bind_ortvalue_input(second_in, mid)
            to_out.bind_output(second_out, "cuda", device_id)
            second.run_with_iobinding(to_out)
            return to_out.copy_outputs_to_cpu()[0]

    return run_fixed_batches(run, x, fixed_batch) if fixed_batch else run(x)


def _device_id(sess: ort.InferenceSession) -> int:
    return int(sess.get_provider_options().get("CUDAExecutionProvider", {})
               .get("device_id", 0) or 0)


def run_with_iobinding(
    sess: ort.InferenceSession,
    feeds: Mapping[str, np.ndarray],
    output_names: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """Run `sess`, with its outputs bound on the GPU when it runs on CUDA or TensorRT.

    Why: outputs stay on the device until one copy at the end. Inputs are bound as host
    arrays (`bind_cpu_input`); `OrtValue.ortvalue_from_numpy(..., "cuda")`, used before, made
    the 15-18 ms host->device copy of a detector batch while holding the GIL (its pybind code
    releases nothing), stalling the pipeline's other threads (benchmarks/NOTES.md, entries 9
    and 10). `bind_cpu_input` itself still holds the GIL while it copies the array: ~7 ms per
    8-crop classifier batch on the H100 machine (entry 23). On other providers this is plain
    `sess.run`.
    """
    names = list(output_names) if output_names is not None else [
        o.name for o in sess.get_outputs()
    ]
    if sess.get_providers()[0] not in _CUDA_PROVIDERS:
        return sess.run(names, dict(feeds))
    binding = sess.io_binding()
    device_id = _device_id(sess)
    keep_alive = []  # the bound host arrays must outlive the run
    for name, arr in feeds.items():
        host = np.ascontiguousarray(arr)
        keep_alive.append(host)
        binding.bind_cpu_input(name, host)
    for name in names:
        binding.bind_output(name, "cuda", device_id)
    with _device_run_turn():
        sess.run_with_iobinding(binding)
        outputs = binding.copy_outputs_to_cpu()
    del keep_alive
    return outputs
