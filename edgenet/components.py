"""Loading the models a pipeline mode needs: the pack (or its precision variant), the
detector and classifier sessions (built at once on two threads), the ensemble; injected
components are reused as they are."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgenet.errors import EdgenetError
from edgenet.errors import warn as _warn
from edgenet.run_defaults import classifier_batch

if TYPE_CHECKING:
    from edgenet.pipeline import PipelineConfig


def load_pack(model: str | os.PathLike | None) -> Any:
    """The model pack at `model`, or at the default location, with a helpful error."""
    from edgenet.pack import ModelPack, default_pack_dir

    path = Path(model) if model else Path(default_pack_dir())
    if not path.exists():
        where = "--model" if model else "the default pack location"
        raise EdgenetError(
            f"no model pack at {where}",
            path=path,
            fix="get one with `edgenet models pull` (real weights; needs internet), convert a "
            "SpeciesNet model folder with `edgenet convert pack SRC DST`, or try the synthetic "
            "demo with `edgenet demo`; then pass --model DST or set EDGENET_HOME",
        )
    return ModelPack.load(path)


def _runs_on_cpu(model: Any) -> bool:
    """True when MODEL's session runs on onnxruntime's own CPU provider."""
    from edgenet.providers import session_device

    session = getattr(model, "session", None)
    return session is not None and session_device(session) == "cpu"


def _pack_variant(pack: Any, precision: str) -> Any:
    """The pack's files for a precision (fp32 is the pack itself)."""
    variant = getattr(pack, "variant", None)
    if variant is None:
        return pack
    return variant(precision)  # also verifies the model files' checksums


def _attr(obj: Any, *names: str) -> Any:
    for name in names:
        if isinstance(obj, dict) and name in obj:
            return obj[name]
        if hasattr(obj, name):
            return getattr(obj, name)
    return None


@dataclass
class Components:
    """The models a mode needs (None for the others) and the classifier type."""

    detector: Any = None
    classifier: Any = None
    ensemble: Any = None
    whole_image: bool = False
    model_version: str | None = None
    detector_name: str | None = None
    load_seconds: float = 0.0


def load_components(config: PipelineConfig) -> Components:
    """Build the models the mode needs, reusing any injected ones."""
    start = time.perf_counter()
    mode = config.mode
    need_detector = mode in ("full", "detector")
    need_classifier = mode in ("full", "classifier")
    need_ensemble = mode in ("full", "ensemble")
    comps = Components(
        detector=config.detector, classifier=config.classifier, ensemble=config.ensemble
    )
    missing = (
        (need_detector and comps.detector is None)
        or (need_classifier and comps.classifier is None)
        or (need_ensemble and comps.ensemble is None)
        or config.whole_image is None
    )
    pack = config.pack
    if missing and pack is None:
        pack = load_pack(config.model)
    files = _pack_variant(pack, config.precision) if pack is not None else None
    if config.whole_image is not None:
        comps.whole_image = bool(config.whole_image)
    elif pack is not None:
        comps.whole_image = _attr(pack, "type", "type_") == "full_image"
    if pack is not None:
        comps.model_version = _attr(pack, "version")
        detector_path = _attr(files, "detector")
        comps.detector_name = Path(detector_path).name if detector_path else None
    classifier_session = None
    from edgenet import cuda_graph
    from edgenet.providers import make_session, warm_up_in_background

    # `EDGENET_CUDA_GRAPH=1`: the classifier's session captures CUDA graphs (edgenet/
    # cuda_graph.py); such a session takes no warm-up run (it would capture the warm-up's
    # buffers), and a plain one is built where onnxruntime refuses the capture or, later,
    # where the graph runs fail.
    graph_wanted = cuda_graph.wanted()

    def open_session(role: str, plain: bool = False) -> Any:
        nonlocal graph_wanted
        # The CPU arena only at batch 1 (providers.make_session says why).
        rows = config.batch_size if role == "detector" else classifier_batch(config)
        args = (_attr(files, role), config.device, config.threads, config.precision, rows == 1)
        if graph_wanted and role == "classifier" and not plain:
            try:
                return make_session(*args, cuda_graph=True)
            except EdgenetError as err:
                _warn(f"EDGENET_CUDA_GRAPH: no graph capture for the classifier ({err}); "
                      "it runs as without the switch")
                graph_wanted = False
        sess = make_session(*args)
        if role == "classifier":  # its first run comes last and costs most (entry 23)
            warm_up_in_background(sess, rows)
        return sess

    if need_classifier and comps.classifier is None and need_detector and comps.detector is None:
        # Both sessions at once: building one is mostly single-threaded graph optimisation
        # (~4 s each for the full-size models) and releases the GIL, so on two or more cores the
        # classifier's costs no wall time beside the detector's (cold start, benchmarks/NOTES.md).
        # onnxruntime-openvino 1.24 holds the GIL while it builds, so there the two builds run
        # one after the other, as without the thread (NOTES.md entry 22).
        # An error surfaces from `.result()` below, still before any image is touched.
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(1, thread_name_prefix="edgenet-session")
        classifier_session = pool.submit(open_session, "classifier")
        pool.shutdown(wait=False)
    try:
        if need_detector and comps.detector is None:
            from edgenet.detector import DetectorModel

            comps.detector = DetectorModel(
                _attr(files, "detector"),
                device=config.device,
                threads=config.threads,
                precision=config.precision,
                session=open_session("detector"),
            )
    except BaseException:
        if classifier_session is not None:  # the detector's error is the one to report
            from concurrent.futures import wait

            wait([classifier_session])
        raise
    session = classifier_session.result() if classifier_session is not None else None
    if need_classifier and comps.classifier is None:
        from edgenet.classifier import ClassifierModel

        labels = _attr(pack, "labels")
        if labels is None:
            labels = _attr(pack, "classifier_labels")
        if session is None:
            session = open_session("classifier")
        comps.classifier = ClassifierModel(
            _attr(files, "classifier"),
            labels,
            device=config.device,
            threads=config.threads,
            precision=config.precision,
            target_species_txt=config.target_species_txt,
            session=session,
        )
        if graph_wanted:
            comps.classifier.fixed_binding = True
            comps.classifier.plain_session = lambda: open_session("classifier", plain=True)
    if (need_detector and config.detector is None) or (
            need_classifier and config.classifier is None):
        # Sessions were built here: give back the weights' pre-optimisation copies (heap.py).
        from edgenet.heap import release_freed_heap

        release_freed_heap()
    if config.precision == "int8" and any(
        _runs_on_cpu(m) for m in (comps.detector, comps.classifier)
    ):
        from edgenet.run_defaults import int8_cpu_warning

        message = int8_cpu_warning()
        if message:
            _warn(message)
    if need_ensemble and comps.ensemble is None:
        from edgenet.ensemble import Ensemble

        comps.ensemble = Ensemble(
            _attr(pack, "taxonomy"),
            _attr(pack, "geofence"),
            _attr(pack, "version"),
            geofence=config.geofence,
        )
    comps.load_seconds = time.perf_counter() - start
    return comps
