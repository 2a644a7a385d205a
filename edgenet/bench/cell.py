"""One matrix cell: its spec, the child process that runs it (`python -m edgenet.bench
_cell`), and the parent that starts it and watches its process tree's memory."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgenet.bench.machine import nvidia_smi_rows
from edgenet.bench.stages import STAGES
from edgenet.errors import EdgenetError


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


def _current_rss_mb() -> float | None:
    """This process's resident memory now (psutil when installed, else Linux's /proc)."""
    with contextlib.suppress(Exception):
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    with contextlib.suppress(OSError, ValueError, IndexError):
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
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


def classifier_alone(classifier: Any, image_path: str, batch: int, repeats: int = 3
                     ) -> dict[str, Any]:
    """Milliseconds per crop of the classifier alone, on `batch` crops cut from the centre of
    IMAGE_PATH (best of `repeats` runs after one warm-up run).

    Why: on frames where no detection reaches the classification threshold (the generated
    ones with a synthetic pack, for instance), the pipeline's classifier stage never runs, and
    a bench that showed no classifier time would hide the second model's cost."""
    import numpy as np

    from edgenet.decode_workers import make_crops
    from edgenet.images import load_rgb_image

    crops = make_crops(load_rgb_image(image_path), [[0.35, 0.35, 0.3, 0.3]] * max(1, batch))
    classifier.infer(crops)  # warm-up: first run at this shape
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        classifier.infer(crops)
        times.append(time.perf_counter() - t0)
    return {"ms_per_crop": 1000.0 * min(times) / len(crops), "batch": int(len(crops)),
            "image": Path(image_path).name, "runs": len(times),
            "crop_shape": list(np.shape(crops)[1:])}


def cell_main(spec_path: str, out_path: str) -> int:
    """Child entry: load the models once, run the first image(s) (cold: start-up and the
    first run at each shape), then all images again (warm); write the result JSON."""
    spec = CellSpec(**json.loads(Path(spec_path).read_text(encoding="utf-8")))
    result: dict[str, Any] = {"key": spec.key()}
    try:
        from edgenet.pipeline import load_components, run_pipeline

        cold_cfg = _pipeline_config(spec, spec.images[: max(1, spec.warmup)])
        comps = load_components(cold_cfg)
        # Where the process's memory peaks: while the sessions are built, or while it runs.
        result["load_peak_rss_mb"], result["rss_after_load_mb"] = (_self_peak_rss_mb(),
                                                                   _current_rss_mb())
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
            stage_threads=warm.get("stage_threads") or [],
            workers=warm.get("workers"),
            images=len(spec.images),
            **_summarise_predictions(preds.get("predictions", [])),
        )
        if comps.classifier is not None and not warm.get("counts", {}).get("crops"):
            for image in spec.images:  # the first image that decodes
                with contextlib.suppress(EdgenetError, OSError, ValueError):
                    result["classifier_alone"] = classifier_alone(comps.classifier, image,
                                                                  spec.batch_size)
                    break
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
    """Polls a process tree's summed RSS (psutil) and per-process GPU memory (nvidia-smi).

    Why the tree is re-listed only every `children_every` seconds: listing a process's
    descendants makes psutil read every process's /proc entry, and doing that on every 50 ms
    poll cost the measuring process 0.42-0.45 s of CPU in a 12 s one-image run, which on a
    2-core machine made the measured command 0.5-0.6 s slower than the same command unobserved
    (benchmarks/NOTES.md, entry 17). Between listings only the known processes' RSS is read
    (one small /proc read each). A child that starts between listings is counted from the
    next one; decode workers live for the whole run.
    Used by `edgenet bench` cells and by `benchmarks/compare_reference.run_measured`.
    """

    def __init__(self, pid: int, interval: float = 0.05, gpu: bool = False,
                 children_every: float = 0.5) -> None:
        self.pid = pid
        self.interval = interval
        self.gpu = gpu
        self.children_every = children_every
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
        last_gpu = last_listing = float("-inf")
        procs: list[Any] = []
        while not self._stop.is_set():
            pids = [self.pid]
            now = time.monotonic()
            if psutil is not None:
                try:
                    if now - last_listing >= self.children_every or not procs:
                        root = psutil.Process(self.pid)
                        procs = [root, *root.children(recursive=True)]
                        last_listing = now
                    total = 0
                    for p in procs:
                        with contextlib.suppress(psutil.Error):
                            total += p.memory_info().rss
                    pids = [p.pid for p in procs]
                    self.peak_rss_mb = max(self.peak_rss_mb or 0.0, total / 2**20)
                except psutil.Error:  # the root has exited
                    procs = []
            if self.gpu and now - last_gpu > 0.5:
                last_gpu = now
                used = gpu_memory_mb(pids)
                if used is not None:
                    self.peak_gpu_mb = max(self.peak_gpu_mb or 0.0, used)
            self._stop.wait(self.interval)


def gpu_memory_mb(pids: Iterable[int]) -> float | None:
    """GPU memory used by these processes (NVIDIA only, via nvidia-smi), or None."""
    rows = nvidia_smi_rows(["--query-compute-apps=pid,used_memory",
                            "--format=csv,noheader,nounits"], timeout=5)
    if rows is None:
        return None
    want = set(pids)
    used = 0.0
    for parts in rows:
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
