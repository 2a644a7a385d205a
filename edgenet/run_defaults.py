"""Device-dependent defaults of a run: batch size, decode workers, fixed batches, threads.

Each is chosen by the provider the models run on (a GPU-class provider, one that pays for
every new input shape, or the CPU), and each choice is measured (benchmarks/NOTES.md).
"""

from __future__ import annotations

import os
import platform
from typing import Any

_X86 = ("x86_64", "amd64", "i386", "i686", "x86")


def _fix_batch_shapes(comps: Any, batch_size: int, classifier_batch_size: int) -> None:
    """On GPU providers, run the models at exactly their batch size in rows (padded): the
    detector at `batch_size` images, the classifier at `classifier_batch_size` crops
    (`classifier_batch(config)`), so that each new partial-batch size does not cost a new
    kernel selection (providers.py says why). Set on every run, so models reused across runs
    of other batch sizes follow this one."""
    from edgenet.providers import is_shape_sensitive

    mode = os.environ.get("EDGENET_FIXED_BATCH", "auto")  # "0": never, "1": also on the CPU
    rows = {"detector": batch_size, "classifier": classifier_batch_size}
    for role, model in (("detector", comps.detector), ("classifier", comps.classifier)):
        if model is None or not hasattr(model, "fixed_batch"):
            continue
        size = rows[role]
        wanted = size > 1 and mode != "0" and (
            mode == "1" or is_shape_sensitive(getattr(model, "session", None)))
        model.fixed_batch = size if wanted else None


def _set_device_pixels(comps: Any) -> None:
    """`EDGENET_DEVICE_PIXELS`: which models are fed uint8 pixels and convert them inside
    onnxruntime, on the device for a GPU session (`onnx_writer.unit_float_model_bytes`):
    `1` or `detector`, `classifier`, `both`; `0` (default) none. Off by default: on the H200
    the detector's was slower (benchmarks/NOTES.md entry 20), the classifier's is not yet
    measured on a GPU (entry 23), and on the CPU neither is faster. Predictions are the same
    either way."""
    value = os.environ.get("EDGENET_DEVICE_PIXELS", "0").strip().lower()
    chosen = {"0": (), "": (), "1": ("detector",), "detector": ("detector",),
              "classifier": ("classifier",), "both": ("detector", "classifier")}.get(value)
    if chosen is None:
        from edgenet.errors import warn

        warn(f"EDGENET_DEVICE_PIXELS={value!r} is not one of 0, 1, detector, classifier, "
             "both: ignored")
        chosen = ()
    for role in ("detector", "classifier"):
        model = getattr(comps, role, None)
        if model is None or not hasattr(model, "device_pixels"):
            continue
        if role in chosen and getattr(model, "fixed_binding", False):
            # Its session may capture CUDA graphs, which only the fixed binding may run.
            from edgenet.errors import warn

            warn("EDGENET_DEVICE_PIXELS: not for the classifier with EDGENET_CUDA_GRAPH=1 "
                 "(its runs keep one input buffer); its crops are scaled on the CPU")
            chosen = tuple(r for r in chosen if r != role)
        model.device_pixels = role in chosen


def default_batch_size(accelerated: bool) -> int:
    """`--batch-size` when the user does not say: 8 on a GPU (fills the device; the models run
    fixed-size batches there), 1 on the CPU: measured on the full-size pack, 14 images, 2
    cores, identical predictions: batch 1 took 99.9 s and 1.6 GB against batch 8's 117.0 s and
    2.8 GB (the activations of one image stay in cache better; benchmarks/NOTES.md entry 8)."""
    return 8 if accelerated else 1


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cpus or 1


def crop_threads() -> int:
    """Threads that cut one image's crops when the pipeline crops in its own process.

    Cutting a crop is numpy work that releases the GIL, and in the CPU pipeline nothing else
    runs while an image's crops are cut (the detector is done, the classifier waits for them):
    27 crops of a 3 MP image took 0.39 s on one thread and 0.23 s on two (2-core CPU,
    benchmarks/NOTES.md entry 17), the same bytes; with entry 18's cheaper kernel 0.21-0.25 s
    and 0.115 s. Decode workers cut on one thread each:
    they are already one process per core.
    """
    return max(1, min(4, usable_cpus()))


def default_workers(accelerated: bool) -> int:
    """Decode workers when the user does not say.

    On the CPU: in-process on <= 2 cores, else about a quarter of the cores. Measured on a
    2-core CPU (51 images, tiny synthetic pack): one worker was slower (97 s) than in-process
    decoding (87 s): the worker competes with onnxruntime's threads, which need the cores.
    On a GPU the models leave the CPU free and decoding, letterboxing and cutting crops are
    what feeds the device, so up to 8 workers, leaving two cores to the pipeline's own
    threads. Why 8 and not every core: on the H100 (benchmarks/NOTES.md entry 9) 8 workers
    ran the 336 images as fast as 14 or 15 (21.1 s vs 20.9 and 21.4), each worker holds
    ~110-140 MB of RSS (entry 14), and since one decode per image (entry 11) ~170 ms of worker
    CPU per 3 MP image lets 8 workers feed ~47 images/s, twice what that run reached.
    `--workers N` overrides it for bigger frames or a faster device.
    """
    cpus = usable_cpus()
    if accelerated:
        return max(1, min(8, cpus - 2))
    return 0 if cpus <= 2 else min(4, max(1, cpus // 4))


def accelerated_device(device: str, precision: str = "fp32") -> bool:
    """Whether `--device DEVICE` will run on a GPU-class provider (before any session exists;
    an `auto` GPU whose libraries then fail to load runs on the CPU after all)."""
    from edgenet.providers import SHAPE_SENSITIVE_PROVIDERS, resolve_providers

    try:
        return resolve_providers(str(device), str(precision))[0][0] in SHAPE_SENSITIVE_PROVIDERS
    except Exception:  # noqa: BLE001 - a bad --device is reported when the models load
        return False


def _on_accelerator(comps: Any) -> bool:
    """True when a model runs on a GPU-class provider (one that pays per new input shape)."""
    from edgenet.providers import is_shape_sensitive

    return any(
        model is not None and is_shape_sensitive(getattr(model, "session", None))
        for model in (comps.detector, comps.classifier)
    )


def _overlap_stages(comps: Any) -> bool:
    """Whether the stages run on three threads (`overlap.py`, `PipelineRun._stream`): on GPU
    providers, where onnxruntime's runs leave the CPU free; not on the CPU, where the threads
    would compete for the same cores. `EDGENET_OVERLAP=0/1` overrides (tests force it)."""
    mode = os.environ.get("EDGENET_OVERLAP", "auto")
    if mode in ("0", "1"):
        return mode == "1"
    return _on_accelerator(comps)


def cpu_flags() -> list[str]:
    """The SIMD features that decide int8/bf16 speed and accuracy (VNNI, AVX512_BF16, AMX)."""
    from edgenet.providers import cpuinfo_flags_line

    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
              "amx_int8", "asimd", "asimddp", "sve")
    line = cpuinfo_flags_line()
    have = set(line.split(":", 1)[1].split()) if ":" in line else set()
    return [f for f in wanted if f in have]


def int8_cpu_warning(flags: list[str] | None = None, machine: str | None = None) -> str | None:
    """Why an int8 pack may be less accurate on this CPU, or None.

    The int8 packs use uint8 activations x int8 weights (converters/quantize.py says why).
    x86 CPUs without VNNI multiply those pairs with an instruction whose 16-bit intermediate
    sums can saturate (onnxruntime's quantization docs), so results can drift from what the
    pack's fidelity.json (measured on a VNNI machine) promises. Not an issue on ARM. Unknown
    flags (no /proc/cpuinfo, e.g. Windows) say nothing rather than guess.
    """
    arch = (machine or platform.machine()).lower()
    have = cpu_flags() if flags is None else flags
    if arch not in _X86 or not have:
        return None
    if {"avx512_vnni", "avx_vnni", "amx_int8"} & set(have):
        return None
    return ("this x86 CPU has no VNNI: the int8 pack's uint8 x int8 products can saturate "
            "here, so accuracy may be below its fidelity report; compare with --precision fp32 "
            "on a few images before relying on it")


def classifier_batch(config: Any) -> int:
    """Crops per classifier batch of a `PipelineConfig`: `classifier_batch_size`, else
    `batch_size`."""
    return config.classifier_batch_size or config.batch_size
