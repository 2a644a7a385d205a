"""Per-component results in speciesnet 5.0.6's shapes: what the detector and classifier of
one image report, failures included, before the ensemble combines them."""

from __future__ import annotations

from edgenet.constants import CATEGORY_TO_LABEL, NUM_CLASSIFICATIONS_FOR_ENSEMBLE, Failure


def whole_image_detection() -> dict:
    """The category "0" pseudo-detection that whole-image classifications are attached to."""
    return {
        "category": "0",
        "label": CATEGORY_TO_LABEL["0"],
        "conf": 1.0,
        "bbox": [0.0, 0.0, 1.0, 1.0],
    }


def select_detections_for_classification(
    detections: list[dict], threshold: float, max_classifications: int | None = None
) -> list[int]:
    """Indices of detections to classify: conf >= threshold, top `max` by conf, ascending
    (the rule lives in `edgenet.classifier`, imported here when first needed: numpy)."""
    from edgenet.classifier import select_detections_for_classification as select

    return list(select(detections, threshold, max_classifications))


def failure_result(filepath: str, failure: Failure) -> dict:
    """`{"filepath", "failures": [NAME]}`, what a failed component reports."""
    return {"filepath": filepath, "failures": [failure.name]}


def build_classifier_result(
    filepath: str,
    classifications: list[dict] | None,
    detections: list[dict] | None,
    indices: list[int],
    whole_image: bool,
) -> dict:
    """Attach raw classifications to their detections, as the reference's helper does.

    `classifications` None means the classifier failed for this image.
    """
    if classifications is None:
        return failure_result(filepath, Failure.CLASSIFIER)
    if whole_image:
        if len(classifications) != 1:
            return failure_result(filepath, Failure.CLASSIFIER)
        return {
            "filepath": filepath,
            "detections": [{**whole_image_detection(), "raw_classifications": classifications[0]}],
        }
    if detections is None:
        return failure_result(filepath, Failure.CLASSIFIER)
    if len(classifications) != len(indices):
        return failure_result(filepath, Failure.CLASSIFIER)
    out = [dict(det) for det in detections]
    for idx, cls in zip(indices, classifications, strict=True):
        out[idx]["raw_classifications"] = cls
    return {"filepath": filepath, "detections": out}


def num_classes_to_compute(max_classifications_per_detection: int | None) -> int | None:
    """Top classes to keep per crop: at least what the ensemble needs (None = all)."""
    if max_classifications_per_detection is None:
        return None
    return max(max_classifications_per_detection, NUM_CLASSIFICATIONS_FOR_ENSEMBLE)
