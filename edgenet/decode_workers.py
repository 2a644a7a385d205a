"""Decode workers: decode, letterbox and crop images in spawned processes (or in-process).

What a worker does with one image is a `DecodeJob` -> `DecodeResult` (`run_decode_job`, a
top-level function so the `spawn` start method, Windows' only one, can pickle it); the
`DecodeExecutor` runs jobs in a process pool, survives workers that die (rebuilds the pool
and retries the job once) and falls back to in-process decoding when workers cannot start at
all. The pipeline (`edgenet.pipeline`) submits jobs a bounded window ahead.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

from edgenet.errors import warn
from edgenet.heap import release_freed_heap
from edgenet.result_transfer import (
    make_transfer_dir,
    remove_transfer_dir,
    save_frame,
    spill,
    take_frame,
    unspill,
)


@dataclass
class DecodeJob:
    """What a worker should do with one image."""

    filepath: str
    letterbox: bool = False
    keep_image: bool = False
    crops: Any = None  # None, "full_image", or a list of normalised [x, y, w, h] boxes
    transfer_dir: str | None = None  # set by the executor: arrays come back by file there
    keep_frame: bool = False  # keep the decoded frame there for this image's crop job
    frame: Any = None  # (path, shape) of a kept frame: crop from it instead of decoding


@dataclass
class DecodeResult:
    """What a worker returns: arrays only (PIL images are returned only in-process)."""

    filepath: str
    ok: bool = False
    error: str = ""
    letterboxed: Any = None
    orig_w: int = 0
    orig_h: int = 0
    image: Any = None
    crops: Any = None
    crop_error: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    spill: Any = None  # (path, bytes, layout) while the arrays are in a file (result_transfer)
    frame: Any = None  # (path, shape) of the decoded frame kept for the crop job, if any


def _worker_init() -> None:
    """Workers ignore Ctrl-C: the main process decides what to save and when to stop.

    They also exit when the main process dies (`kill -9`, the OOM killer): otherwise a worker
    blocked writing a result into the full result pipe (whose read end it also holds) lives
    forever, and every killed run leaks one process per worker (tests/test_kill_resume.py).
    """
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except (ValueError, OSError):
        pass
    try:
        # Each worker is one unit of parallelism: OpenCV's own thread pool (one thread per
        # core by default) in every worker would put workers x cores threads on the cores for
        # each letterbox resize. One thread gives the same pixels (rows are split, not sums).
        import cv2

        cv2.setNumThreads(1)
    except Exception:  # noqa: BLE001 - only a tuning; decoding works without it
        pass
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(
            target=_exit_with_parent, args=(parent.sentinel,), daemon=True,
            name="edgenet-parent-watch",
        ).start()


def _exit_with_parent(sentinel: int) -> None:
    """Block until the parent process is gone, then end this worker at once."""
    from multiprocessing.connection import wait

    wait([sentinel])
    os._exit(1)


def _warm_worker() -> None:
    """Import what decode jobs need, so the first real job does not pay for it."""
    import edgenet.classifier  # noqa: F401
    import edgenet.images  # noqa: F401
    import edgenet.letterbox  # noqa: F401 - not edgenet.detector: no onnxruntime in workers


def start_workers(workers: int) -> DecodeExecutor:
    """A decode-worker pool, started now; pass it to `PipelineRun(..., executor=...)`."""
    executor = DecodeExecutor(workers)
    executor.warm()
    return executor


_crop_pools: dict[int, cf.ThreadPoolExecutor] = {}
_crop_pools_lock = threading.Lock()


def _crop_pool(threads: int) -> cf.ThreadPoolExecutor:
    with _crop_pools_lock:
        pool = _crop_pools.get(threads)
        if pool is None:
            pool = _crop_pools[threads] = cf.ThreadPoolExecutor(
                threads, thread_name_prefix="edgenet-crop")
        return pool


def make_crops(image: Any, spec: Any, threads: int = 1) -> Any:
    """Classifier inputs for an image: uint8 (k, 480, 480, 3), k = number of boxes (or 1).

    `threads` > 1 cuts the boxes on that many threads (`run_defaults.crop_threads` says
    when); the crops are the same bytes in the same order, and the first box that cannot be
    cut raises, as on one thread."""
    import numpy as np

    from edgenet.classifier import crop_for_classifier, full_image_crop, image_array

    if spec == "full_image":
        return np.asarray(full_image_crop(image))[None]
    arr: Any = image_array(image) if spec else None  # one PIL -> array copy per image, not per box

    def cut(bbox: Any) -> Any:
        return np.asarray(crop_for_classifier(arr, bbox))

    boxes = list(spec)
    crops = (list(_crop_pool(threads).map(cut, boxes)) if threads > 1 and len(boxes) > 1
             else [cut(bbox) for bbox in boxes])
    if not crops:
        return np.zeros((0, 480, 480, 3), dtype=np.uint8)
    return np.stack(crops)


def run_decode_job(job: DecodeJob) -> DecodeResult:
    """Decode one image and prepare what later stages need; never raises.

    A decode failure is reported in `error` (the detector and, for whole images, the
    classifier then fail for this image, as in the reference); a crop failure only in
    `crop_error` (the classifier fails for this image). With `job.transfer_dir` (in a worker)
    the arrays are written there and the result carries their file (`result_transfer`).
    """
    result = _decode(job)
    if job.transfer_dir:
        spill(result, job.transfer_dir)
        # The job's frames are freed now; without a trim glibc keeps each worker at its
        # largest image's footprint (8 workers, 48 shared images: summed worker RSS peak
        # 1131 -> 975-1023 MB, median 904 -> 688 MB, same wall time; NOTES.md entry 16).
        release_freed_heap()
    return result


def _decode(job: DecodeJob) -> DecodeResult:
    from edgenet.classifier import image_array
    from edgenet.images import load_rgb_image

    result = DecodeResult(filepath=job.filepath)
    t0 = time.perf_counter()
    if job.frame is not None and not job.letterbox:
        frame = take_frame(job.frame)  # the letterbox job's decoded pixels, if still there
        if frame is not None:
            result.orig_w, result.orig_h = int(frame.shape[1]), int(frame.shape[0])
            result.timings["decode"] = time.perf_counter() - t0
            result.ok = True
            _add_crops(result, frame, job.crops)
            return result
    try:
        image: Any = load_rgb_image(job.filepath)  # PIL image; None once only the array is kept
        result.orig_w, result.orig_h = image.width, image.height
    except Exception as err:  # noqa: BLE001 - any decode problem is a per-image failure
        result.error = f"{type(err).__name__}: {err}"
        result.timings["decode"] = time.perf_counter() - t0
        return result
    t1 = time.perf_counter()
    result.timings["decode"] = t1 - t0
    pixels = None  # one HWC uint8 copy, shared by the letterbox, the crops and the kept frame
    if job.letterbox:
        try:
            from edgenet.letterbox import letterbox

            pixels = image_array(image)
            if not job.keep_image:
                image = None  # the crops and the kept frame use the array: one copy, not two
            result.letterboxed = letterbox(pixels)
        except Exception as err:  # noqa: BLE001 - reference: detector preprocess failure
            result.error = f"{type(err).__name__}: {err}"
            result.timings["letterbox"] = time.perf_counter() - t1
            return result
        result.timings["letterbox"] = time.perf_counter() - t1
    result.ok = True
    if job.crops is not None:
        _add_crops(result, image if pixels is None else pixels, job.crops)
    if job.keep_image:
        result.image = image
    if job.keep_frame and job.transfer_dir:
        try:
            result.frame = save_frame(image_array(image) if pixels is None else pixels,
                                      job.transfer_dir)
        except Exception:  # noqa: BLE001 - only an optimisation: the crop job decodes again
            result.frame = None
    return result


def _add_crops(result: DecodeResult, image: Any, spec: Any) -> None:
    t0 = time.perf_counter()
    try:
        result.crops = make_crops(image, spec)
    except Exception as err:  # noqa: BLE001 - reference: classifier preprocess failure
        result.crop_error = f"{type(err).__name__}: {err}"
    result.timings["crop"] = time.perf_counter() - t0


class DecodeExecutor:
    """Runs decode jobs in spawned worker processes, or inline when workers == 0.

    A worker that dies (a decoder crash, the OOM killer) breaks a ProcessPoolExecutor; the
    pool is then rebuilt and each affected job is retried once in the new pool; a job that
    breaks the pool twice becomes a per-image failure. The run itself never dies of it.
    """

    def __init__(self, workers: int) -> None:
        self.workers = max(0, int(workers))
        self._pool: cf.ProcessPoolExecutor | None = None
        self.restarts = 0
        self.inline_fallback = False  # workers could not start at all: decode in-process
        self._start_checked = False
        self.transfer_dir: str | None = None  # results' arrays by file, not pipe (if usable)
        self._early: tuple[DecodeJob, cf.Future] | None = None  # see `prefetch`
        if self.workers > 0:
            self._pool = self._new_pool()
            self.transfer_dir = make_transfer_dir()

    def _pooled(self, job: DecodeJob) -> DecodeJob:
        """JOB as a worker gets it: told where to write its arrays."""
        return replace(job, transfer_dir=self.transfer_dir) if self.transfer_dir else job

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
        )

    def _restart(self, broken: cf.ProcessPoolExecutor | None) -> None:
        if broken is not self._pool or self._pool is None:
            return  # already replaced
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new_pool()
        self.restarts += 1

    def submit(self, job: DecodeJob) -> tuple[Any, cf.Future]:
        """Submit; returns (pool, future) so a broken pool can be told from a later one."""
        if self._pool is None:
            early, self._early = self._early, None
            if early is not None and early[0] == job:
                return None, early[1]
            future: cf.Future = cf.Future()
            future.set_result(run_decode_job(job))
            return None, future
        pool = self._pool
        try:
            return pool, pool.submit(run_decode_job, self._pooled(job))
        except cf.process.BrokenProcessPool:
            self._restart(pool)
            pool = self._pool
            return pool, pool.submit(run_decode_job, self._pooled(job))  # type: ignore[union-attr]

    def _workers_start(self) -> bool:
        """Whether a fresh pool's worker can start and run a job that touches no image."""
        if self._pool is None:
            return False
        try:
            self._pool.submit(_warm_worker).result(timeout=300)
            return True
        except Exception:  # noqa: BLE001 - any failure here means: no usable workers
            return False

    def _check_start(self, err: BaseException) -> None:
        """After the first broken pool: if workers cannot start at all (e.g. `spawn` cannot
        re-import the main module of a script fed on stdin), decode in-process from now on
        instead of failing every image; a worker killed by one image keeps the retry path."""
        if self._start_checked:
            return
        self._start_checked = True
        if self._workers_start():
            return
        warn(f"decode workers could not start ({type(err).__name__}: {err}); "
              "decoding in-process instead (--workers 0)")
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None
        self.inline_fallback = True

    def result(self, submitted: tuple[Any, cf.Future], job: DecodeJob) -> DecodeResult:
        """The job's result; never raises (see the class docstring)."""
        pool, future = submitted
        for attempt in range(2):
            try:
                return unspill(future.result())
            except cf.process.BrokenProcessPool as err:
                self._restart(pool)
                self._check_start(err)
                if self.inline_fallback:
                    return run_decode_job(job)
                if attempt == 1 or self._pool is None:
                    return DecodeResult(
                        filepath=job.filepath, error=f"decode worker crashed ({err})"
                    )
                warn(f"{job.filepath}: a decode worker died; retrying in a new worker")
                pool, future = self._pool, self._pool.submit(run_decode_job, self._pooled(job))
            except Exception as err:  # noqa: BLE001 - e.g. a result that cannot be pickled
                return DecodeResult(filepath=job.filepath, error=f"{type(err).__name__}: {err}")
        raise AssertionError("unreachable")

    def prefetch(self, job: DecodeJob) -> None:
        """In-process decoding: start JOB on a thread now, while the models load; the first
        `submit` takes its result if it asks for the same job (else it is dropped).

        Why: decoding and letterboxing the first image (~0.07 s for 3 MP) would otherwise
        wait for the sessions; Pillow and OpenCV release the GIL while they work, and loading
        is mostly onnxruntime's C++ (benchmarks/NOTES.md, entry 18). Workers need no help:
        their pool starts decoding as soon as the pipeline submits."""
        if self._pool is not None or self._early is not None:
            return
        future: cf.Future = cf.Future()

        def decode() -> None:
            future.set_result(run_decode_job(job))  # never raises

        threading.Thread(target=decode, name="edgenet-first-decode", daemon=True).start()
        self._early = (job, future)

    def warm(self) -> None:
        """Start the workers now (spawn + imports), e.g. while the models load."""
        if self._pool is not None:
            for _ in range(self.workers):
                self._pool.submit(_warm_worker)

    def shutdown(self, cancel: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)
            self._pool = None
        remove_transfer_dir(self.transfer_dir)  # with the files of results nobody collected
        self.transfer_dir = None
