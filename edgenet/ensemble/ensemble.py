"""`Ensemble`: per-image predictions from detector, classifier and geolocation results.

Produces exactly the per-image dicts of speciesnet 5.0.6's `SpeciesNetEnsemble.combine`:
the same failures, the same detections (classified ones gain a `processed_classification`),
the whole-image pseudo-detection of `full_image` classifiers paired with the top detection,
raw classifications cut to the requested number of classes, keys in the same order, `None`
values dropped and `model_version` last.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from edgenet.constants import (
    DEFAULT_MAX_CLASSIFICATIONS_PER_DETECTION,
    NUM_CLASSIFICATIONS_FOR_ENSEMBLE,
    DetectionLabel,
    Failure,
    failure_names,
)
from edgenet.ensemble.combiner import combine_one
from edgenet.ensemble.geofence import Geofence, load_geofence_map
from edgenet.ensemble.taxonomy import LabelFormatError, Taxonomy
from edgenet.errors import EdgenetError, InputError

__all__ = ["Ensemble", "check_matching_detections"]

_WHOLE_IMAGE_CATEGORY = "0"
# Stand-in for "the top detection" when a whole-image classifier's image has none.
_NO_DETECTION = {"label": DetectionLabel.ANIMAL.value, "conf": 0.0}


def _top_classes(classifications: Mapping, num_classes: int | None) -> dict:
    """Copy of a raw classifications dict with "classes"/"scores" cut to the top ones."""
    result = dict(classifications)
    if num_classes is not None:
        result["classes"] = classifications["classes"][:num_classes]
        result["scores"] = classifications["scores"][:num_classes]
    return result


def _same_bbox(a: Sequence, b: Sequence) -> bool:
    """Boxes equal within 1e-4 per coordinate (exactly equal lists: the common case)."""
    if len(a) != len(b):
        return False
    if a == b and all(x == x for x in a):  # equal and NaN-free: isclose holds too
        return True
    return all(math.isclose(x, y, abs_tol=1e-4) for x, y in zip(a, b, strict=False))


def check_matching_detections(
    filepath: str, classified_detections: Sequence[Mapping], detections: Sequence[Mapping]
) -> None:
    """Refuse classifier results computed on other detections than the detector's.

    Same test as the reference: same count, same categories, boxes equal within 1e-4.
    """
    matching = len(classified_detections) == len(detections) and all(
        a["category"] == b["category"] and _same_bbox(a["bbox"], b["bbox"])
        for a, b in zip(classified_detections, detections, strict=False)
    )
    if not matching:
        raise InputError(
            f"Classifications for `{filepath}` were computed on different detections than "
            "the ones provided",
            fix="make sure classifications and detections come from the same detector output",
        )


class Ensemble:
    """The ensemble stage: taxonomy + geofence loaded once, `combine` per batch of images."""

    def __init__(
        self,
        taxonomy_path: str | Path,
        geofence_path: str | Path,
        model_version: str,
        geofence: bool = True,
    ) -> None:
        self.model_version = model_version
        self.enable_geofence = geofence
        self.taxonomy = Taxonomy.from_file(taxonomy_path)
        self.geofence = Geofence(load_geofence_map(geofence_path), self.taxonomy, geofence)

    @classmethod
    def from_maps(
        cls,
        taxonomy_map: dict[str, str],
        geofence_map: dict,
        model_version: str,
        geofence: bool = True,
    ) -> Ensemble:
        """An ensemble from in-memory maps (tests, synthetic packs): no files read."""
        self = cls.__new__(cls)
        self.model_version = model_version
        self.enable_geofence = geofence
        self.taxonomy = Taxonomy(taxonomy_map)
        self.geofence = Geofence(geofence_map, self.taxonomy, geofence)
        return self

    @property
    def taxonomy_map(self) -> dict[str, str]:
        return self.taxonomy.map

    @property
    def geofence_map(self) -> dict:
        return self.geofence.map

    def combine(
        self,
        filepaths: Sequence[str],
        classifier_results: Mapping[str, dict],
        detector_results: Mapping[str, dict],
        geolocation_results: Mapping[str, dict],
        partial_predictions: Mapping[str, dict] | None = None,
        max_classifications_per_detection: int | None = DEFAULT_MAX_CLASSIFICATIONS_PER_DETECTION,
    ) -> list[dict]:
        """Predictions for `filepaths`, in order (see module docstring).

        Previously finished predictions in `partial_predictions` are reused unchanged.
        Malformed results for an image raise `InputError` naming the image.
        """
        results = []
        for filepath in filepaths:
            if partial_predictions is not None and filepath in partial_predictions:
                results.append(partial_predictions[filepath])
                continue
            try:
                results.append(
                    self._combine_image(
                        filepath, classifier_results, detector_results, geolocation_results,
                        max_classifications_per_detection,
                    )
                )
            except EdgenetError as err:
                if filepath in str(err):
                    raise
                raise InputError(f"image `{filepath}`: {err}") from err
            except (LabelFormatError, KeyError, TypeError, IndexError, AttributeError) as err:
                raise InputError(
                    f"malformed detector/classifier results for image `{filepath}` "
                    f"({type(err).__name__}: {err})",
                    fix="regenerate the detections/classifications JSON with edgenet or "
                    "speciesnet 5.0.6",
                ) from err
        return results

    def _combine_image(
        self,
        filepath: str,
        classifier_results: Mapping[str, dict],
        detector_results: Mapping[str, dict],
        geolocation_results: Mapping[str, dict],
        max_classifications_per_detection: int | None,
    ) -> dict:
        failure = Failure(0)
        classifier_result = classifier_results.get(filepath)
        if classifier_result is not None and "failures" not in classifier_result:
            classified = classifier_result["detections"]
        else:
            classified = None
            failure |= Failure.CLASSIFIER
        detector_result = detector_results.get(filepath)
        if detector_result is not None and "failures" not in detector_result:
            detections = detector_result["detections"]
        else:
            detections = None
            failure |= Failure.DETECTOR
        if filepath in geolocation_results:
            geolocation = geolocation_results[filepath]
        else:
            geolocation = {}
            failure |= Failure.GEOLOCATION

        output: list[dict] | None = None
        pairs: list[tuple[int, Mapping]] = []
        if classified and classified[0]["category"] == _WHOLE_IMAGE_CATEGORY:
            # Whole-image classifier: the pseudo-detection first, then the (unclassified)
            # detector output; the pseudo-detection is ensembled with the top detection.
            output = [dict(classified[0])]
            if detections is not None:
                output.extend(dict(det) for det in detections)
                pairs.append((0, detections[0] if detections else _NO_DETECTION))
        elif detections is not None:
            if classified is not None:
                check_matching_detections(filepath, classified, detections)
                output = [dict(det) for det in classified]
                pairs = [(i, det) for i, det in enumerate(output) if "raw_classifications" in det]
            else:
                output = [dict(det) for det in detections]

        if pairs and output is not None:
            country = geolocation.get("country")
            admin1_region = geolocation.get("admin1_region")
            for idx, det in pairs:
                raw = output[idx]["raw_classifications"]
                classes = raw["classes"][:NUM_CLASSIFICATIONS_FOR_ENSEMBLE]
                scores = raw["scores"][:NUM_CLASSIFICATIONS_FOR_ENSEMBLE]
                output[idx]["processed_classification"] = combine_one(
                    classes, scores, det["label"], det["conf"], country, admin1_region,
                    self.geofence,
                )

        for det in output or []:
            if "raw_classifications" in det:
                det["raw_classifications"] = _top_classes(
                    det["raw_classifications"], max_classifications_per_detection
                )

        result = {
            "filepath": filepath,
            "failures": failure_names(failure) if failure else None,
            "country": geolocation.get("country"),
            "admin1_region": geolocation.get("admin1_region"),
            "latitude": geolocation.get("latitude"),
            "longitude": geolocation.get("longitude"),
            "detections": output,
        }
        result = {key: value for key, value in result.items() if value is not None}
        result["model_version"] = self.model_version
        return result
