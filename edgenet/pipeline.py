"""The one pipeline behind every `edgenet run` mode (full, detector-, classifier-, ensemble-only).

Stages, driven from the calling thread of the main process (on GPU providers from three
threads, so that tensors, detector runs and classifier runs overlap: `edgenet/overlap.py`):

1. decode (+ letterbox, + crops when they are already known) -- in `--workers N` spawned
   processes (N = 0: in-process; `edgenet/decode_workers.py`; their arrays come back through
   /dev/shm files on Linux, `edgenet/result_transfer.py`). A bounded window of submitted
   jobs keeps memory flat.
2. detector batches of equal-shaped letterboxed images (`--batch-size` images), then NMS.
3. crops of the selected detections (in the workers, from the decoded pixels the letterbox
   job left in /dev/shm, or by decoding the image again where there is no room, as the
   reference does; in-process, the decoded image is kept and cropped directly).
4. classifier batches (`--classifier-batch-size` crops, default `--batch-size`), top-k.
5. geolocation + ensemble per image, stored by filepath; periodic atomic checkpoints.

Results are written in the instances' order, whatever order images finish in, and each
image's numbers depend only on that image, so the JSON is the same for any batch size or
worker count. What each mode writes, and how failures arise, is speciesnet 5.0.6's
(`multiprocessing.py`): an image that cannot be decoded fails the detector and the
classifier; a crop that cannot be made fails the classifier; a missing result becomes a
failure of that component; images not yet processed appear as failures in checkpoints (and
are retried on resume), exactly as the reference's periodic saver writes them.

`run_pipeline(config) -> (predictions_dict, stats)` is the API used by the CLI and by
`edgenet bench`; `stats["timings"]` holds per-stage seconds (decode, letterbox, detector,
nms, crop, classifier, ensemble, save).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from edgenet.components import (  # noqa: F401 - re-exported: edgenet.pipeline API
    Components,
    load_components,
    load_pack,
)
from edgenet.constants import (
    DEFAULT_DETECTION_THRESHOLD_FOR_CLASSIFICATION,
    DEFAULT_MAX_CLASSIFICATIONS_PER_DETECTION,
    Failure,
)
from edgenet.decode_workers import (  # noqa: F401 - re-exported: edgenet.pipeline API
    DecodeExecutor,
    DecodeJob,
    DecodeResult,
    make_crops,
    run_decode_job,
    start_workers,
)
from edgenet.errors import EdgenetError, InputError
from edgenet.errors import warn as _warn
from edgenet.predictions import Checkpointer, make_predictions_dict
from edgenet.result_transfer import drop_frame
from edgenet.results import (  # noqa: F401 - re-exported: edgenet.pipeline API
    build_classifier_result,
    failure_result,
    num_classes_to_compute,
    select_detections_for_classification,
    whole_image_detection,
)
from edgenet.run_defaults import (  # noqa: F401 - re-exported: edgenet.pipeline API
    _fix_batch_shapes,
    _on_accelerator,
    _overlap_stages,
    _set_device_pixels,
    accelerated_device,
    classifier_batch,
    crop_threads,
    default_batch_size,
    default_workers,
)

Mode = Literal["full", "detector", "classifier", "ensemble"]
MODES: tuple[str, ...] = ("full", "detector", "classifier", "ensemble")
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
class PipelineConfig:
    """Everything one run needs. Models are loaded from `pack`/`model` unless injected.

    `detector`, `classifier`, `ensemble` may be given pre-built (tests, bench): objects with
    the `DetectorModel`, `ClassifierModel` and `Ensemble` interfaces. `detections` and
    `classifications` are already-loaded component results (`--detections-json`,
    `--classifications-json`) keyed by filepath.
    """

    instances: list[dict]
    mode: Mode = "full"
    predictions_json: str | os.PathLike | None = None
    model: str | os.PathLike | None = None
    pack: Any = None
    detector: Any = None
    classifier: Any = None
    ensemble: Any = None
    whole_image: bool | None = None
    detections: dict[str, dict] | None = None
    classifications: dict[str, dict] | None = None
    partial_predictions: dict[str, dict] | None = None
    resume: bool = True
    batch_size: int = 8
    # Crops per classifier batch; None: `batch_size`. A GPU may want more crops per batch than
    # images per detector batch (a camera-trap frame yields 0 to dozens of crops).
    classifier_batch_size: int | None = None
    workers: int | None = 0  # None: `default_workers` for the device the models run on
    device: str = "auto"
    precision: str = "fp32"
    threads: int | None = None
    geofence: bool = True
    target_species_txt: str | os.PathLike | None = None
    detection_threshold_for_classification: float = DEFAULT_DETECTION_THRESHOLD_FOR_CLASSIFICATION
    max_classifications_per_image: int | None = None
    max_classifications_per_detection: int | None = DEFAULT_MAX_CLASSIFICATIONS_PER_DETECTION
    checkpoint_every_images: int = 0
    checkpoint_every_seconds: float = 120.0
    progress: Any = None
    handle_signals: bool = True
    geolocate: Callable[[dict], dict | None] | None = None
    on_image_done: Callable[[str, dict], None] | None = None


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


@dataclass
class _Item:
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


class Interrupted(Exception):
    """Raised inside the run loop when SIGINT/SIGTERM asked us to stop."""


class _SignalGuard:
    """Turns the first SIGINT/SIGTERM into a stop request; a second SIGINT aborts at once."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _SignalGuard:
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    self._previous[sig] = signal.signal(sig, self._handle)
                except (ValueError, OSError):
                    pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signum

    def check(self) -> None:
        if self.requested is not None:
            raise Interrupted

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            try:
                signal.signal(sig, handler)
            except (ValueError, OSError):
                pass


class PipelineRun:
    """One execution of the pipeline; `run()` returns `(predictions_dict, stats)`."""

    def __init__(
        self,
        config: PipelineConfig,
        components: Components | None = None,
        executor: DecodeExecutor | None = None,
    ) -> None:
        if config.mode not in MODES:
            raise ValueError(f"unknown mode {config.mode!r}")
        if config.batch_size < 1:
            raise InputError(
                f"--batch-size must be at least 1, got {config.batch_size}",
                fix="use e.g. --batch-size 8",
            )
        if config.classifier_batch_size is not None and config.classifier_batch_size < 1:
            raise InputError(
                f"--classifier-batch-size must be at least 1, got {config.classifier_batch_size}",
                fix="leave it out to use --batch-size, or use e.g. --classifier-batch-size 32",
            )
        self.comps = components or load_components(config)
        if config.workers is None:
            config.workers = default_workers(_on_accelerator(self.comps))
        if config.workers < 0:
            raise InputError(
                f"--workers must be 0 or more, got {config.workers}",
                fix="use 0 to decode in-process",
            )
        self.config = config
        _fix_batch_shapes(self.comps, config.batch_size,  # reused components follow this run
                          classifier_batch(config))
        _set_device_pixels(self.comps)
        self.overlap = _overlap_stages(self.comps)
        self._crop_threads = crop_threads()  # crops cut in this process (no decode workers)
        self._ahead_streams: list[Any] = []
        self.whole_image = self.comps.whole_image
        self.timings = dict.fromkeys(TIMING_KEYS, 0.0)
        self._timings_lock = threading.Lock()  # stages may run on several threads (overlap)
        self.counts = {"detector_batches": 0, "classifier_batches": 0, "crops": 0}
        self.results: dict[str, dict] = {}
        self._placeholder: dict | None = None
        self._start = time.perf_counter()
        self._first_done: float | None = None
        self.num_classes = num_classes_to_compute(config.max_classifications_per_detection)
        self._detections = config.detections or {}
        self._classifications = config.classifications or {}

        instances = config.instances
        self.filepaths = [inst["filepath"] for inst in instances]
        if config.partial_predictions is not None:
            self.partial = dict(config.partial_predictions)
        elif config.resume and config.predictions_json:
            from edgenet.predictions import load_partial_predictions

            self.partial, _ = load_partial_predictions(config.predictions_json, instances)
        else:
            self.partial = {}
        # Unique filepaths still to do, first-occurrence order; the last duplicate's location
        # wins, as in the reference (its results dicts are keyed by filepath).
        last_instance: dict[str, dict] = {}
        for inst in instances:
            last_instance[inst["filepath"]] = inst
        self.todo: list[_Item] = []
        seen: set[str] = set()
        for inst in instances:
            fp = inst["filepath"]
            if fp in seen or fp in self.partial:
                continue
            seen.add(fp)
            self.todo.append(_Item(filepath=fp, instance=last_instance[fp]))
        self.checkpointer = Checkpointer(
            config.predictions_json,
            self.build_output,
            every_images=config.checkpoint_every_images,
            every_seconds=config.checkpoint_every_seconds,
        )
        self.geolocate = config.geolocate or _default_geolocate()
        self._executor = executor

    # -- output --------------------------------------------------------------------------

    def _pending(self, filepath: str) -> dict:
        """What an image not (yet) processed looks like in the output, as the reference."""
        mode = self.config.mode
        if mode == "detector":
            return failure_result(filepath, Failure.DETECTOR)
        if mode == "classifier":
            return failure_result(filepath, Failure.CLASSIFIER)
        if self._placeholder is None:
            self._placeholder = self.comps.ensemble.combine(
                filepaths=[filepath],
                classifier_results={},
                detector_results={},
                geolocation_results={},
                partial_predictions=None,
                max_classifications_per_detection=self.config.max_classifications_per_detection,
            )[0]
        return {**self._placeholder, "filepath": filepath}

    def build_output(self) -> dict:
        """The predictions dict now: reused, new, and pending images, in instance order."""
        out = []
        for fp in self.filepaths:
            if fp in self.partial:
                out.append(self.partial[fp])
            elif fp in self.results:
                out.append(self.results[fp])
            else:
                out.append(self._pending(fp))
        return make_predictions_dict(out)

    # -- stages --------------------------------------------------------------------------

    def _add_time(self, key: str, seconds: float) -> None:
        with self._timings_lock:
            self.timings[key] = self.timings.get(key, 0.0) + seconds

    def _window(self, executor: DecodeExecutor) -> int:
        """Jobs submitted ahead. Inline decoding gains nothing from read-ahead, so 1."""
        if executor.workers == 0:
            return 1
        return max(2 * self.config.batch_size, 2 * executor.workers, 4)

    def _decode_stage(
        self, executor: DecodeExecutor, items: Iterable[_Item],
        make_job: Callable[[_Item], DecodeJob],
    ) -> Iterator[tuple[_Item, DecodeResult]]:
        """Submit decode jobs a bounded window ahead; yield results in submission order."""
        pending: deque[tuple[_Item, DecodeJob, tuple[Any, cf.Future]]] = deque()
        it = iter(items)
        exhausted = False
        window = self._window(executor)
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
                self._add_time(key, value)
            yield item, result

    def _detector_stage(
        self, decoded: Iterable[tuple[_Item, DecodeResult]]
    ) -> Iterator[tuple[list[_Item], Any]]:
        """Group equal-shaped letterboxed images into batches and build each batch's input
        tensor: yields `(items, tensor)`, or `([item], None)` for an image that failed."""
        groups: dict[tuple[int, ...], list[_Item]] = {}
        order: list[tuple[int, ...]] = []
        buffered = 0
        bs = self.config.batch_size
        for item, result in decoded:
            self.guard.check()
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
                yield self._with_tensor(batch)
            elif buffered >= 2 * bs:
                oldest = order.pop(0)
                batch = groups.pop(oldest)
                buffered -= len(batch)
                yield self._with_tensor(batch)
        for shape in order:
            self.guard.check()
            yield self._with_tensor(groups[shape])

    def _with_tensor(self, batch: list[_Item]) -> tuple[list[_Item], Any]:
        """The batch and its float input tensor (counted as detector time); a batch whose
        tensor cannot be built fails in `_run_detector` like a failed run."""
        t0 = time.perf_counter()
        try:
            tensor = self.comps.detector.to_tensor([item.letterboxed for item in batch])
        except Exception as err:  # noqa: BLE001 - a failed batch fails its images only
            tensor = err
        self._add_time("detector", time.perf_counter() - t0)
        return batch, tensor

    def _detector_runs(self, batches: Iterable[tuple[list[_Item], Any]]) -> Iterator[_Item]:
        """Run the detector on each prepared batch; yield its items with detections."""
        for batch, tensor in batches:
            if tensor is None:  # an image that failed before the detector
                yield from batch
            else:
                yield from self._run_detector(batch, tensor)

    def _run_detector(self, batch: list[_Item], tensor: Any) -> Iterator[_Item]:
        det = self.comps.detector
        t0 = time.perf_counter()
        try:
            if isinstance(tensor, Exception):
                raise tensor
            raw = det.infer(tensor)
        except Exception as err:  # noqa: BLE001 - a failed batch fails its images only
            _warn(f"detector failed on a batch of {len(batch)} image(s): {err}")
            raw = None
        t1 = time.perf_counter()
        self._add_time("detector", t1 - t0)
        self.counts["detector_batches"] += 1
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
        self._add_time("nms", time.perf_counter() - t1)
        yield from batch

    def _crop_stage(self, executor: DecodeExecutor, items: Iterable[_Item]) -> Iterator[_Item]:
        """Select detections and crop them (always_crop after the detector)."""
        cfg = self.config
        pending: deque[tuple[_Item, DecodeJob, tuple[Any, cf.Future]]] = deque()
        window = self._window(executor)
        for item in items:
            self.guard.check()
            if self.whole_image:
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
                    item.crops = make_crops(item.image, bboxes, self._crop_threads)
                except Exception as err:  # noqa: BLE001
                    _warn(f"{item.filepath}: cannot crop detections: {err}")
                    item.classifier_failed = True
                self._add_time("crop", time.perf_counter() - t0)
                item.image = None
                yield item
                continue
            # The crop job reads (and deletes) the kept frame instead of decoding the file
            # again; without one, or if it is gone, it decodes as the reference does.
            job = DecodeJob(item.filepath, crops=bboxes, frame=item.frame)
            item.frame = None
            pending.append((item, job, executor.submit(job)))
            while len(pending) >= window or (pending and pending[0][2][1].done()):
                yield self._finish_crop(executor, *pending.popleft())
        while pending:
            self.guard.check()
            yield self._finish_crop(executor, *pending.popleft())

    def _finish_crop(
        self, executor: DecodeExecutor, item: _Item, job: DecodeJob,
        submitted: tuple[Any, cf.Future],
    ) -> _Item:
        result = executor.result(submitted, job)
        for key in ("decode", "crop"):
            self._add_time(key, result.timings.get(key, 0.0))
        if not result.ok or result.crop_error:
            _warn(f"{item.filepath}: cannot crop detections: {result.error or result.crop_error}")
            item.classifier_failed = True
        else:
            item.crops = result.crops
        return item

    def _classifier_stage(self, items: Iterable[_Item]) -> Iterator[_Item]:
        """Batch crops across images; yield each image once all its crops are classified."""
        bs = classifier_batch(self.config)
        queue: list[tuple[_Item, int]] = []  # (item, crop index) awaiting the classifier
        waiting: deque[_Item] = deque()  # items with crops in flight, in arrival order
        for item in items:
            self.guard.check()
            ready = self._prepare_for_classifier(item)
            if ready:
                yield item
                continue
            waiting.append(item)
            for k in range(item.crops_left):
                queue.append((item, k))
            while len(queue) >= bs:
                self._run_classifier(queue[:bs])
                del queue[:bs]
                yield from _pop_finished(waiting)
        while queue:
            self.guard.check()
            self._run_classifier(queue[:bs])
            del queue[:bs]
            yield from _pop_finished(waiting)
        yield from _pop_finished(waiting)

    def _prepare_for_classifier(self, item: _Item) -> bool:
        """Set up the item's classification slots; True when nothing needs classifying."""
        if item.classifier_failed or (self.whole_image and not item.decoded):
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

    def _run_classifier(self, batch: list[tuple[_Item, int]]) -> None:
        import numpy as np

        cls = self.comps.classifier
        t0 = time.perf_counter()
        try:
            arr = np.stack([item.crops[k] for item, k in batch])
            logits = cls.infer(arr)
            rows = cls.classifications(logits, self.num_classes)
        except Exception as err:  # noqa: BLE001 - a failed batch fails its images only
            _warn(f"classifier failed on a batch of {len(batch)} crop(s): {err}")
            rows = None
        self._add_time("classifier", time.perf_counter() - t0)
        self.counts["classifier_batches"] += 1
        self.counts["crops"] += len(batch)
        for j, (item, k) in enumerate(batch):
            if rows is None:
                item.classifier_failed = True
            else:
                item.classifications[k] = rows[j]
            item.crops_left -= 1
            if item.crops_left == 0:
                item.crops = None

    # -- finishing an image ----------------------------------------------------------------

    def _classifier_result(self, item: _Item) -> dict:
        if item.classifier_failed:
            return failure_result(item.filepath, Failure.CLASSIFIER)
        return build_classifier_result(
            item.filepath, item.classifications, item.detections, item.indices, self.whole_image
        )

    def _geolocation(self, item: _Item) -> dict | None:
        try:
            return self.geolocate(item.instance)
        except Exception as err:  # noqa: BLE001 - reference: a missing result -> GEOLOCATION
            _warn(f"{item.filepath}: geolocation failed: {err}")
            return None

    def _ensemble_one(
        self, filepath: str, classifier_result: dict | None, detector_result: dict | None,
        geolocation: dict | None,
    ) -> dict:
        t0 = time.perf_counter()
        mcpd = self.config.max_classifications_per_detection
        try:
            result = self.comps.ensemble.combine(
                filepaths=[filepath],
                classifier_results={filepath: classifier_result} if classifier_result else {},
                detector_results={filepath: detector_result} if detector_result else {},
                geolocation_results={filepath: geolocation} if geolocation is not None else {},
                partial_predictions=None,
                max_classifications_per_detection=mcpd,
            )[0]
        except Exception as err:  # noqa: BLE001 - never lose the run to one image
            _warn(f"{filepath}: ensemble failed ({err}); reporting a classifier failure")
            result = self.comps.ensemble.combine(
                filepaths=[filepath],
                classifier_results={},
                detector_results={filepath: detector_result} if detector_result else {},
                geolocation_results={filepath: geolocation} if geolocation is not None else {},
                partial_predictions=None,
                max_classifications_per_detection=mcpd,
            )[0]
        self._add_time("ensemble", time.perf_counter() - t0)
        return result

    def _finish(self, item: _Item) -> None:
        mode = self.config.mode
        fp = item.filepath
        if mode == "detector":
            result = item.detector_result or failure_result(fp, Failure.DETECTOR)
        elif mode == "classifier":
            result = self._classifier_result(item)
        elif mode == "full":
            result = self._ensemble_one(
                fp, self._classifier_result(item), item.detector_result, self._geolocation(item)
            )
        else:  # ensemble-only
            result = self._ensemble_one(
                fp,
                self._classifications.get(fp),
                self._detections.get(fp),
                self._geolocation(item),
            )
        self.results[fp] = result
        # Drop per-image working state: only the result is kept, so memory grows by one
        # prediction per image and nothing else.
        item.image = item.letterboxed = item.crops = None
        item.detector_result = item.detections = None
        item.classifications = []
        if self._first_done is None:
            self._first_done = time.perf_counter() - self._start
        if self.config.progress is not None:
            self.config.progress.update(1)
        if self.config.on_image_done is not None:
            self.config.on_image_done(fp, result)
        self.checkpointer.tick(1)

    # -- driver ----------------------------------------------------------------------------

    def _stream(self, executor: DecodeExecutor) -> Iterator[_Item]:
        """The stage chain for this mode, as one iterator of finished-with items."""
        mode = self.config.mode
        items: Iterable[_Item] = self.todo
        if mode == "ensemble":
            return iter(items)
        if mode == "classifier":
            return self._classifier_stage(
                self._ahead(self._classifier_only_decode(executor, items), "edgenet-decode")
            )
        def job(item: _Item) -> DecodeJob:
            return detector_decode_job(item.filepath, mode, self.whole_image, executor)

        # With overlap (GPU providers), three threads: decode results + batching + input
        # tensors | detector runs + NMS + crops | classifier + ensemble (the caller's).
        batches = self._ahead(self._detector_stage(self._decode_stage(executor, items, job)),
                              "edgenet-decode", maxsize=1)
        detected = self._detector_runs(batches)
        if mode == "detector":
            return detected
        return self._classifier_stage(
            self._ahead(self._crop_stage(executor, detected), "edgenet-detect")
        )

    def _ahead(
        self, upstream: Iterator[Any], name: str, maxsize: int | None = None
    ) -> Iterator[Any]:
        """UPSTREAM on its own thread when the stages should overlap (see `overlap.py`)."""
        if not self.overlap:
            return upstream
        from edgenet.overlap import run_ahead

        stream = run_ahead(upstream, maxsize=maxsize or 2 * self.config.batch_size, name=name)
        self._ahead_streams.append(stream)
        return stream

    def _classifier_only_decode(
        self, executor: DecodeExecutor, items: Iterable[_Item]
    ) -> Iterator[_Item]:
        """Classifier-only: detections come from --detections-json, crops at decode time."""
        cfg = self.config
        to_decode: list[_Item] = []
        for item in items:
            if self.whole_image:
                item.crop_spec = "full_image"
                to_decode.append(item)
                continue
            prior = self._detections.get(item.filepath, {})
            item.detections = prior.get("detections") if isinstance(prior, dict) else None
            item.indices = select_detections_for_classification(
                item.detections or [],
                cfg.detection_threshold_for_classification,
                cfg.max_classifications_per_image,
            )
            if item.indices:
                item.crop_spec = [item.detections[i]["bbox"] for i in item.indices]  # type: ignore[index]
            to_decode.append(item)

        def job(item: _Item) -> DecodeJob:
            return DecodeJob(item.filepath, crops=item.crop_spec)

        undecoded = [item for item in to_decode if item.crop_spec is None]
        for item in undecoded:
            yield item  # nothing to classify: no need to load the image (as the reference)
        wanted = [item for item in to_decode if item.crop_spec is not None]
        for item, result in self._decode_stage(executor, wanted, job):
            item.decoded = result.ok
            if not result.ok or result.crop_error:
                item.classifier_failed = True
            else:
                item.crops = result.crops
            yield item

    def run(self) -> tuple[dict, dict]:
        """Process every remaining image; save; return `(predictions_dict, stats)`."""
        cfg = self.config
        interrupted: int | None = None
        error: BaseException | None = None
        self.guard = _SignalGuard(cfg.handle_signals)
        executor: DecodeExecutor | None = self._executor
        with self.guard:
            try:
                if executor is None:
                    executor = DecodeExecutor(cfg.workers if cfg.mode != "ensemble" else 0)
                for item in self._stream(executor):
                    self._finish(item)
                    self.guard.check()
            except Interrupted:
                interrupted = self.guard.requested
            except KeyboardInterrupt:
                interrupted = int(signal.SIGINT)
            except BaseException as err:  # save what is done, then re-raise
                error = err
            finally:
                for stream in reversed(self._ahead_streams):
                    # Stop the read-ahead threads (consumer side first) before their decode
                    # pool goes away.
                    stream.close()
                if executor is not None:
                    executor.shutdown(cancel=interrupted is not None or error is not None)
                if cfg.progress is not None:
                    cfg.progress.close()
            predictions = self.build_output()
            if cfg.predictions_json:
                t0 = time.perf_counter()
                try:
                    self.checkpointer.save()
                except EdgenetError:
                    if error is None:
                        raise
                self.timings["save"] += time.perf_counter() - t0 + self.checkpointer.save_seconds
        if error is not None:
            raise error
        return predictions, self._stats(predictions, interrupted)

    def _stats(self, predictions: dict, interrupted: int | None) -> dict:
        wall = time.perf_counter() - self._start
        done = len(self.results)
        failures = sum(1 for p in predictions["predictions"] if p.get("failures"))
        return {
            "mode": self.config.mode,
            "images_total": len(self.filepaths),
            "images_reused": sum(1 for fp in set(self.filepaths) if fp in self.partial),
            "images_processed": done,
            "images_pending": len(self.todo) - done,
            "predictions_with_failures": failures,
            "interrupted": interrupted is not None,
            "signal": interrupted,
            "wall_s": wall,
            "images_per_s": (done / wall) if wall > 0 else 0.0,
            "first_image_s": self._first_done,
            "model_load_s": self.comps.load_seconds,
            "timings": dict(self.timings),
            "counts": dict(self.counts),
            "checkpoints": self.checkpointer.saves,
            "batch_size": self.config.batch_size,
            "classifier_batch_size": classifier_batch(self.config),
            "workers": self.config.workers,
            "whole_image": self.whole_image,
        }


def _pop_finished(waiting: deque[_Item]) -> Iterator[_Item]:
    """Yield items at the front of `waiting` whose crops are all classified (in order)."""
    while waiting and waiting[0].crops_left == 0:
        yield waiting.popleft()
    # Items behind an unfinished one wait: results are keyed, order is only for progress.


def _default_geolocate() -> Callable[[dict], dict | None]:
    """speciesnet's per-instance geolocation (admin1 from lat/lon for the USA)."""
    from edgenet.ensemble import geolocation

    geolocate = getattr(geolocation, "geolocate_instance", None)
    if geolocate is not None:
        return geolocate

    def fallback(instance: dict) -> dict:
        country = instance.get("country")
        admin1 = instance.get("admin1_region")
        lat, lon = instance.get("latitude"), instance.get("longitude")
        return {
            "country": country,
            "admin1_region": geolocation.find_admin1_region(country, admin1, lat, lon),
            "latitude": lat,
            "longitude": lon,
        }

    return fallback


def detector_decode_job(filepath: str, mode: str, whole_image: bool,
                        executor: DecodeExecutor) -> DecodeJob:
    """The decode job of an image in a mode that runs the detector ("full" or "detector")."""
    crops_at_decode = "full_image" if (mode == "full" and whole_image) else None
    keep_image = mode == "full" and not whole_image and executor.workers == 0
    # With workers, the decoded pixels wait in /dev/shm for the crop job (one decode per
    # image, not two), where that folder exists and has room (result_transfer.save_frame).
    keep_frame = mode == "full" and not whole_image and executor.transfer_dir is not None
    return DecodeJob(filepath, letterbox=True, keep_image=keep_image, crops=crops_at_decode,
                     keep_frame=keep_frame)


def prefetch_first_image(config: PipelineConfig, executor: DecodeExecutor) -> None:
    """Decode the first image still to do while the models load (`DecodeExecutor.prefetch`).

    The pack's type is not known yet: the job assumes a crop classifier (SpeciesNet's own
    models); with a whole-image classifier the pipeline asks for another job and this one is
    dropped, which costs one decode on a spare thread and changes no result."""
    if config.mode not in ("full", "detector"):
        return
    done = config.partial_predictions or {}
    first = next((inst["filepath"] for inst in config.instances
                  if inst["filepath"] not in done), None)
    if first is not None:
        executor.prefetch(detector_decode_job(first, config.mode, False, executor))


def run_pipeline(config: PipelineConfig, components: Components | None = None) -> tuple[dict, dict]:
    """Run one pipeline: `(predictions_dict, stats)`.

    `stats` keys: mode, images_total, images_reused, images_processed, images_pending,
    predictions_with_failures, interrupted (bool), signal, wall_s, images_per_s,
    first_image_s, model_load_s, timings {decode, letterbox, detector, nms, crop,
    classifier, ensemble, save} in seconds (decode/letterbox/crop summed over workers),
    counts {detector_batches, classifier_batches, crops}, checkpoints, batch_size, workers.
    Pass pre-loaded `components` (from `load_components`) to time runs without model loading.
    """
    return PipelineRun(config, components).run()


def run_timed(
    *,
    model: str | os.PathLike | None = None,
    pack: Any = None,
    filepaths: list[str] | None = None,
    folders: list[str] | None = None,
    instances: list[dict] | None = None,
    device: str = "auto",
    precision: str = "fp32",
    batch_size: int = 8,
    classifier_batch_size: int | None = None,
    threads: int | None = None,
    workers: int | None = None,
    mode: Mode = "full",
    predictions_json: str | os.PathLike | None = None,
    quiet: bool = True,
    progress: bool = False,
) -> dict:
    """Keyword-friendly wrapper for `edgenet bench`: load, run, return a flat report.

    Returns `{"predictions": predictions_dict, "stats": {stage: seconds, ...},
    "summary": full stats}`; model loading is timed separately (`summary["model_load_s"]`)
    and is not part of `summary["wall_s"]`.
    """
    from edgenet.instances import prepare_instances

    if instances is None:
        instances = prepare_instances(filepaths=filepaths, folders=folders)
    config = PipelineConfig(
        instances=instances,
        mode=mode,
        predictions_json=predictions_json,
        model=model if pack is None or isinstance(pack, (str, os.PathLike)) else None,
        pack=pack if pack is not None and not isinstance(pack, (str, os.PathLike)) else None,
        resume=False,
        batch_size=batch_size,
        classifier_batch_size=classifier_batch_size,
        workers=workers,
        device=device,
        precision=precision,
        threads=threads,
        handle_signals=False,
    )
    if config.model is None and isinstance(pack, (str, os.PathLike)):
        config.model = pack
    comps = load_components(config)
    runner = PipelineRun(config, comps)
    if progress and not quiet:
        from edgenet.progress import ProgressBar

        runner.config.progress = ProgressBar(len(runner.todo))
    predictions, stats = runner.run()
    flat = dict(stats["timings"])
    flat["wall_s"] = stats["wall_s"]
    return {"predictions": predictions, "stats": flat, "summary": stats}
