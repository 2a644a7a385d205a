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

The stages themselves are `edgenet/stages.py`; this module chains them for each mode, keeps
the results, writes checkpoints and handles Ctrl-C (`edgenet/interrupts.py`).

`run_pipeline(config) -> (predictions_dict, stats)` is the API used by the CLI and by
`edgenet bench`; `stats["timings"]` holds per-stage seconds (decode, letterbox, detector,
nms, crop, classifier, ensemble, save).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
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
from edgenet.interrupts import Interrupted, SignalGuard
from edgenet.predictions import Checkpointer, make_predictions_dict
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
from edgenet.stages import (  # noqa: F401 - re-exported: edgenet.pipeline API
    TIMING_KEYS,
    ClassifierStage,
    CropStage,
    DetectorStage,
    ImageWork,
    StageContext,
    classifier_only_decode,
    decode_stage,
)

Mode = Literal["full", "detector", "classifier", "ensemble"]
MODES: tuple[str, ...] = ("full", "detector", "classifier", "ensemble")


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
        self._ahead_streams: list[Any] = []
        self._ahead_waits: list[tuple[str, dict[str, float]]] = []  # (thread, run_ahead waits)
        self.whole_image = self.comps.whole_image
        # The signal guard is made by `run()`, on the thread that runs (handlers are the main
        # thread's only).
        self.ctx = StageContext(config, self.comps, SignalGuard(False), self.whole_image)
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
        self.todo: list[ImageWork] = []
        seen: set[str] = set()
        for inst in instances:
            fp = inst["filepath"]
            if fp in seen or fp in self.partial:
                continue
            seen.add(fp)
            self.todo.append(ImageWork(filepath=fp, instance=last_instance[fp]))
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

    # -- finishing an image ----------------------------------------------------------------

    def _classifier_result(self, item: ImageWork) -> dict:
        if item.classifier_failed:
            return failure_result(item.filepath, Failure.CLASSIFIER)
        return build_classifier_result(
            item.filepath, item.classifications, item.detections, item.indices, self.whole_image
        )

    def _geolocation(self, item: ImageWork) -> dict | None:
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
        self.ctx.add_time("ensemble", time.perf_counter() - t0)
        return result

    def _finish(self, item: ImageWork) -> None:
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

    def _stream(self, executor: DecodeExecutor) -> Iterator[ImageWork]:
        """The stage chain for this mode, as one iterator of finished-with items."""
        ctx = self.ctx
        mode = self.config.mode
        items: Iterable[ImageWork] = self.todo
        if mode == "ensemble":
            return iter(items)
        classify = ClassifierStage(ctx, self.num_classes)
        if mode == "classifier":
            return classify(self._ahead(
                classifier_only_decode(ctx, executor, items, self._detections), "edgenet-decode"))

        def job(item: ImageWork) -> DecodeJob:
            return detector_decode_job(item.filepath, mode, self.whole_image, executor)

        # With overlap (GPU providers), three threads: decode results + batching + input
        # tensors | detector runs + NMS + crops | classifier + ensemble (the caller's).
        detector = DetectorStage(ctx)
        batches = self._ahead(detector.batches(decode_stage(ctx, executor, items, job)),
                              "edgenet-decode", maxsize=1)
        detected = detector.runs(batches)
        if mode == "detector":
            return detected
        crop = CropStage(ctx, crop_threads())
        return classify(self._ahead(crop(executor, detected), "edgenet-detect"))

    def _ahead(
        self, upstream: Iterator[Any], name: str, maxsize: int | None = None
    ) -> Iterator[Any]:
        """UPSTREAM on its own thread when the stages should overlap (see `overlap.py`)."""
        if not self.overlap:
            return upstream
        from edgenet.overlap import run_ahead

        waits: dict[str, float] = {}
        stream = run_ahead(upstream, maxsize=maxsize or 2 * self.config.batch_size, name=name,
                           waits=waits)
        self._ahead_streams.append(stream)
        self._ahead_waits.append((name, waits))
        return stream

    # What each stage thread runs (`_stream`), and the caller's thread after them, by mode.
    _THREAD_WORK = {"edgenet-decode": "decode results, batching, detector input tensors",
                    "edgenet-detect": "detector runs, NMS, crop jobs"}
    _MAIN_WORK = {"full": "classifier, ensemble, results", "classifier": "classifier, results",
                  "detector": "detector runs, NMS, results"}

    def _stage_threads(self, wall: float) -> list[dict[str, Any]]:
        """Each stage thread's seconds and how many of them it waited for its input (the
        thread before it) or for room to hand its output on (the thread after it): the thread
        that waits least sets the rate. Empty when the stages ran on one thread."""
        rows: list[dict[str, Any]] = []
        starved_before: float | None = None  # the first thread waits on decode workers: untimed
        for name, waits in self._ahead_waits:
            work = self._THREAD_WORK.get(name, "")
            if name == "edgenet-decode" and self.config.mode == "classifier":
                work = "decoding and cropping results"
            rows.append({"thread": name, "work": work, "seconds": waits.get("thread_s", 0.0),
                         "waiting_for_input_s": starved_before,
                         "waiting_for_output_s": waits.get("blocked_s", 0.0)})
            starved_before = waits.get("starved_s", 0.0)
        if rows:
            rows.append({"thread": "main", "work": self._MAIN_WORK.get(self.config.mode, ""),
                         "seconds": wall, "waiting_for_input_s": starved_before,
                         "waiting_for_output_s": 0.0})
        return rows

    def run(self) -> tuple[dict, dict]:
        """Process every remaining image; save; return `(predictions_dict, stats)`."""
        cfg = self.config
        interrupted: int | None = None
        error: BaseException | None = None
        guard = self.ctx.guard = SignalGuard(cfg.handle_signals)
        executor: DecodeExecutor | None = self._executor
        with guard:
            try:
                if executor is None:
                    assert cfg.workers is not None  # resolved in __init__
                    executor = DecodeExecutor(cfg.workers if cfg.mode != "ensemble" else 0)
                for item in self._stream(executor):
                    self._finish(item)
                    guard.check()
            except Interrupted:
                interrupted = guard.requested
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
                self.ctx.add_time("save", time.perf_counter() - t0 + self.checkpointer.save_seconds)
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
            "timings": dict(self.ctx.timings),
            "counts": dict(self.ctx.counts),
            "checkpoints": self.checkpointer.saves,
            "batch_size": self.config.batch_size,
            "classifier_batch_size": classifier_batch(self.config),
            "workers": self.config.workers,
            "whole_image": self.whole_image,
            "stage_threads": self._stage_threads(wall),
        }


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
    """Keyword-friendly timing from Python (the NOTES.md measurements): load, run, return a
    flat report.

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
