"""The pipeline's stages: decode, detector (batching, input tensors, runs + NMS), crops and
classifier, each a generator over `ImageWork` items (`edgenet/pipeline.py` chains them).

Every stage reads the run's settings and models from one `StageContext`, adds its seconds to
the run's timings there, and checks the run's stop request between items, so a stage can run
on the caller's thread or on a read-ahead thread (`overlap.py`) alike. A failure fails the
images it touches, never the run: a batch that cannot be built or run marks its images'
detector or classifier as failed, as the reference does.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgenet.constants import Failure
from edgenet.decode_workers import DecodeExecutor, DecodeJob, DecodeResult, make_crops
from edgenet.errors import warn as _warn
from edgenet.result_transfer import drop_frame
from edgenet.results import failure_result, select_detections_for_classification
from edgenet.run_defaults import classifier_batch

if TYPE_CHECKING:
    from edgenet.components import Components
    from edgenet.interrupts import SignalGuard
    from edgenet.pipeline import PipelineConfig

#: The per-stage seconds every run reports (`stats["timings"]`).
TIMING_KEYS = (
    "decode",
    "letterbox",
    "detector",
    "nms",
    "crop",
    "classifier",
    "ensemble",
    "save",
)


@dataclass
class ImageWork:
    """One image's state as it moves through the stages."""

    filepath: str
    instance: dict
    decoded: bool = False
    letterboxed: Any = None
    orig_w: int = 0
    orig_h: int = 0
    image: Any = None
    detector_result: dict | None = None
    detections: list[dict] | None = None
    indices: list[int] = field(default_factory=list)
    crops: Any = None
    crop_spec: Any = None
    frame: Any = None  # decoded pixels kept in /dev/shm for the crop job (result_transfer)
    classifier_failed: bool = False
    classifications: list[Any] = field(default_factory=list)
    crops_left: int = 0


@dataclass
class StageContext:
    """What every stage of one run shares: settings, models, stop request, timings, counts."""

    config: PipelineConfig
    comps: Components
    guard: SignalGuard
    whole_image: bool
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIMING_KEYS, 0.0))
    counts: dict[str, int] = field(
        default_factory=lambda: {"detector_batches": 0, "classifier_batches": 0, "crops": 0})
    # Stages may run on several threads (overlap.py).
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_time(self, key: str, seconds: float) -> None:
        with self._lock:
            self.timings[key] = self.timings.get(key, 0.0) + seconds

    def window(self, executor: DecodeExecutor) -> int:
        """Jobs submitted ahead. Inline decoding gains nothing from read-ahead, so 1."""
        if executor.workers == 0:
            return 1
        return max(2 * self.config.batch_size, 2 * executor.workers, 4)


def decode_stage(
    ctx: StageContext, executor: DecodeExecutor, items: Iterable[ImageWork],
    make_job: Callable[[ImageWork], DecodeJob],
) -> Iterator[tuple[ImageWork, DecodeResult]]:
    """Submit decode jobs a bounded window ahead; yield results in submission order."""
    pending: deque[tuple[ImageWork, DecodeJob, tuple[Any, cf.Future]]] = deque()
    it = iter(items)
    exhausted = False
    window = ctx.window(executor)
    while True:
        while not exhausted and len(pending) < window:
            try:
                item = next(it)
            except StopIteration:
                exhausted = True
                break
            job = make_job(item)
            pending.append((item, job, executor.submit(job)))
        if not pending:
            return
        item, job, submitted = pending.popleft()
        result = executor.result(submitted, job)
        for key, value in result.timings.items():
            ctx.add_time(key, value)
        yield item, result


class DetectorStage:
    """Batches of equal-shaped letterboxed images, their input tensors, detector runs + NMS."""

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx

    def batches(
        self, decoded: Iterable[tuple[ImageWork, DecodeResult]]
    ) -> Iterator[tuple[list[ImageWork], Any]]:
        """Group equal-shaped letterboxed images into batches and build each batch's input
        tensor: yields `(items, tensor)`, or `([item], None)` for an image that failed."""
        groups: dict[tuple[int, ...], list[ImageWork]] = {}
        order: list[tuple[int, ...]] = []
        buffered = 0
        bs = self.ctx.config.batch_size
        for item, result in decoded:
            self.ctx.guard.check()
            if not result.ok:
                item.detector_result = failure_result(item.filepath, Failure.DETECTOR)
                item.detections = None
                yield [item], None
                continue
            item.decoded = True
            item.orig_w, item.orig_h = result.orig_w, result.orig_h
            item.letterboxed = result.letterboxed
            item.image = result.image
            item.frame = result.frame
            if result.crops is not None or result.crop_error:
                item.crops = result.crops
                item.classifier_failed = bool(result.crop_error)
            shape = tuple(result.letterboxed.shape)
            if shape not in groups:
                groups[shape] = []
                order.append(shape)
            groups[shape].append(item)
            buffered += 1
            if len(groups[shape]) >= bs:
                batch = groups.pop(shape)
                order.remove(shape)
                buffered -= len(batch)
                yield self.with_tensor(batch)
            elif buffered >= 2 * bs:
                oldest = order.pop(0)
                batch = groups.pop(oldest)
                buffered -= len(batch)
                yield self.with_tensor(batch)
        for shape in order:
            self.ctx.guard.check()
            yield self.with_tensor(groups[shape])

    def with_tensor(self, batch: list[ImageWork]) -> tuple[list[ImageWork], Any]:
        """The batch and its float input tensor (counted as detector time); a batch whose
        tensor cannot be built fails in `run_batch` like a failed run."""
        t0 = time.perf_counter()
        try:
            tensor = self.ctx.comps.detector.to_tensor([item.letterboxed for item in batch])
        except Exception as err:  # noqa: BLE001 - a failed batch fails its images only
            tensor = err
        self.ctx.add_time("detector", time.perf_counter() - t0)
        return batch, tensor

    def runs(self, batches: Iterable[tuple[list[ImageWork], Any]]) -> Iterator[ImageWork]:
        """Run the detector on each prepared batch; yield its items with detections."""
        for batch, tensor in batches:
            if tensor is None:  # an image that failed before the detector
                yield from batch
            else:
                yield from self.run_batch(batch, tensor)

    def run_batch(self, batch: list[ImageWork], tensor: Any) -> Iterator[ImageWork]:
        ctx = self.ctx
        det = ctx.comps.detector
        t0 = time.perf_counter()
        try:
            if isinstance(tensor, Exception):
                raise tensor
            raw = det.infer(tensor)
        except Exception as err:  # noqa: BLE001 - a failed batch fails its images only
            _warn(f"detector failed on a batch of {len(batch)} image(s): {err}")
            raw = None
        t1 = time.perf_counter()
        ctx.add_time("detector", t1 - t0)
        ctx.counts["detector_batches"] += 1
        for i, item in enumerate(batch):
            hw = tuple(item.letterboxed.shape[:2])
            item.letterboxed = None
            if raw is None:
                item.detector_result = failure_result(item.filepath, Failure.DETECTOR)
                item.detections = None
                continue
            try:
                dets = det.postprocess(raw[i], hw, item.orig_w, item.orig_h)
                item.detections = dets
                item.detector_result = {"filepath": item.filepath, "detections": dets}
            except Exception as err:  # noqa: BLE001
                _warn(f"{item.filepath}: detector postprocessing failed: {err}")
                item.detector_result = failure_result(item.filepath, Failure.DETECTOR)
                item.detections = None
        ctx.add_time("nms", time.perf_counter() - t1)
        yield from batch


class CropStage:
    """Select each image's detections for the classifier and crop them (always_crop)."""

    def __init__(self, ctx: StageContext, threads: int) -> None:
        self.ctx = ctx
        self.threads = threads  # crops cut in this process (no decode workers)

    def __call__(self, executor: DecodeExecutor, items: Iterable[ImageWork]) -> Iterator[ImageWork]:
        ctx = self.ctx
        cfg = ctx.config
        pending: deque[tuple[ImageWork, DecodeJob, tuple[Any, cf.Future]]] = deque()
        window = ctx.window(executor)
        for item in items:
            ctx.guard.check()
            if ctx.whole_image:
                # Crops (the whole image) were made at decode time; a decode failure already
                # fails the classifier (no image, as in the reference).
                yield item
                continue
            item.indices = select_detections_for_classification(
                item.detections or [],
                cfg.detection_threshold_for_classification,
                cfg.max_classifications_per_image,
            )
            if not item.indices:
                drop_frame(item.frame)  # nothing to crop: its kept pixels are not needed
                item.frame = None
                yield item
                continue
            bboxes = [item.detections[i]["bbox"] for i in item.indices]  # type: ignore[index]
            if item.image is not None:
                t0 = time.perf_counter()
                try:
                    item.crops = make_crops(item.image, bboxes, self.threads)
                except Exception as err:  # noqa: BLE001
                    _warn(f"{item.filepath}: cannot crop detections: {err}")
                    item.classifier_failed = True
                ctx.add_time("crop", time.perf_counter() - t0)
                item.image = None
                yield item
                continue
            # The crop job reads (and deletes) the kept frame instead of decoding the file
            # again; without one, or if it is gone, it decodes as the reference does.
            job = DecodeJob(item.filepath, crops=bboxes, frame=item.frame)
            item.frame = None
            pending.append((item, job, executor.submit(job)))
            while len(pending) >= window or (pending and pending[0][2][1].done()):
                yield self._finish(executor, *pending.popleft())
        while pending:
            ctx.guard.check()
            yield self._finish(executor, *pending.popleft())

    def _finish(
        self, executor: DecodeExecutor, item: ImageWork, job: DecodeJob,
        submitted: tuple[Any, cf.Future],
    ) -> ImageWork:
        result = executor.result(submitted, job)
        for key in ("decode", "crop"):
            self.ctx.add_time(key, result.timings.get(key, 0.0))
        if not result.ok or result.crop_error:
            _warn(f"{item.filepath}: cannot crop detections: {result.error or result.crop_error}")
            item.classifier_failed = True
        else:
            item.crops = result.crops
        return item


def classifier_only_decode(
    ctx: StageContext, executor: DecodeExecutor, items: Iterable[ImageWork],
    detections: dict[str, dict],
) -> Iterator[ImageWork]:
    """Classifier-only: DETECTIONS (from --detections-json) choose the crops, cut at decode
    time; an image with nothing to classify is not loaded at all (as the reference)."""
    cfg = ctx.config
    to_decode: list[ImageWork] = []
    for item in items:
        if ctx.whole_image:
            item.crop_spec = "full_image"
            to_decode.append(item)
            continue
        prior = detections.get(item.filepath, {})
        item.detections = prior.get("detections") if isinstance(prior, dict) else None
        item.indices = select_detections_for_classification(
            item.detections or [],
            cfg.detection_threshold_for_classification,
            cfg.max_classifications_per_image,
        )
        if item.indices:
            item.crop_spec = [item.detections[i]["bbox"] for i in item.indices]  # type: ignore[index]
        to_decode.append(item)

    def job(item: ImageWork) -> DecodeJob:
        return DecodeJob(item.filepath, crops=item.crop_spec)

    for item in to_decode:
        if item.crop_spec is None:
            yield item
    wanted = [item for item in to_decode if item.crop_spec is not None]
    for item, result in decode_stage(ctx, executor, wanted, job):
        item.decoded = result.ok
        if not result.ok or result.crop_error:
            item.classifier_failed = True
        else:
            item.crops = result.crops
        yield item


class ClassifierStage:
    """Crops batched across images; each image yielded once all its crops are classified."""

    def __init__(self, ctx: StageContext, num_classes: int | None) -> None:
        self.ctx = ctx
        self.num_classes = num_classes

    def __call__(self, items: Iterable[ImageWork]) -> Iterator[ImageWork]:
        bs = classifier_batch(self.ctx.config)
        queue: list[tuple[ImageWork, int]] = []  # (item, crop index) awaiting the classifier
        waiting: deque[ImageWork] = deque()  # items with crops in flight, in arrival order
        for item in items:
            self.ctx.guard.check()
            if self._prepare(item):
                yield item
                continue
            waiting.append(item)
            for k in range(item.crops_left):
                queue.append((item, k))
            while len(queue) >= bs:
                self.run_batch(queue[:bs])
                del queue[:bs]
                yield from _pop_finished(waiting)
        while queue:
            self.ctx.guard.check()
            self.run_batch(queue[:bs])
            del queue[:bs]
            yield from _pop_finished(waiting)
        yield from _pop_finished(waiting)

    def _prepare(self, item: ImageWork) -> bool:
        """Set up the item's classification slots; True when nothing needs classifying."""
        if item.classifier_failed or (self.ctx.whole_image and not item.decoded):
            item.classifier_failed = True
            return True
        if item.crops is None:
            # No crops: always_crop with nothing selected (or no detections at all).
            item.classifications = []
            return True
        n = int(item.crops.shape[0])
        item.classifications = [None] * n
        item.crops_left = n
        return n == 0

    def run_batch(self, batch: list[tuple[ImageWork, int]]) -> None:
        import numpy as np

        ctx = self.ctx
        cls = ctx.comps.classifier
        t0 = time.perf_counter()
        try:
            arr = np.stack([item.crops[k] for item, k in batch])
            logits = cls.infer(arr)
            rows = cls.classifications(logits, self.num_classes)
        except Exception as err:  # noqa: BLE001 - a failed batch fails its images only
            _warn(f"classifier failed on a batch of {len(batch)} crop(s): {err}")
            rows = None
        ctx.add_time("classifier", time.perf_counter() - t0)
        ctx.counts["classifier_batches"] += 1
        ctx.counts["crops"] += len(batch)
        for j, (item, k) in enumerate(batch):
            if rows is None:
                item.classifier_failed = True
            else:
                item.classifications[k] = rows[j]
            item.crops_left -= 1
            if item.crops_left == 0:
                item.crops = None


def _pop_finished(waiting: deque[ImageWork]) -> Iterator[ImageWork]:
    """Yield items at the front of `waiting` whose crops are all classified (in order)."""
    while waiting and waiting[0].crops_left == 0:
        yield waiting.popleft()
    # Items behind an unfinished one wait: results are keyed, order is only for progress.
