"""The ensemble's decision rules: one detection + its top classes -> one prediction.

Same rules, same order, same thresholds and same `source` strings as speciesnet 5.0.6's
`combine_predictions` (the numbered rules below follow its comments). Comparisons are
strict exactly where the reference's are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgenet.constants import Classification, DetectionLabel
from edgenet.ensemble.geofence import Geofence

__all__ = ["combine_one"]

_HUMAN = Classification.HUMAN.value
_VEHICLE = Classification.VEHICLE.value
_BLANK = Classification.BLANK.value
_ANIMAL = Classification.ANIMAL.value
_UNKNOWN = Classification.UNKNOWN.value
_HUMAN_OR_VEHICLE = frozenset({_HUMAN, _VEHICLE})
_NOT_ANIMAL = frozenset({_BLANK, _HUMAN, _VEHICLE})
_DET_HUMAN = DetectionLabel.HUMAN.value
_DET_VEHICLE = DetectionLabel.VEHICLE.value
_DET_ANIMAL = DetectionLabel.ANIMAL.value


def combine_one(
    classes: Sequence[str],
    scores: Sequence[Any],
    det_label: str,
    det_conf: Any,
    country: str | None,
    admin1_region: str | None,
    geofence: Geofence,
) -> dict:
    """Processed classification `{"class", "score", "source"}` for one detection.

    `classes`/`scores` are the detection's top classes (at most 5, best first);
    `det_label`/`det_conf` the paired detection's label and confidence.
    """
    top_class = classes[0]
    top_score = scores[0]
    prediction: tuple[str, Any, str] | None = None

    if det_label == _DET_HUMAN:
        if det_conf > 0.7:  # 1a: confident human detection
            prediction = (_HUMAN, det_conf, "detector")
        elif det_conf > 0.2 and top_class in _HUMAN_OR_VEHICLE and top_score > 0.5:  # 1b
            prediction = (_HUMAN, top_score, "classifier")

    if prediction is None and det_label == _DET_VEHICLE:
        if det_conf > 0.2 and top_class == _HUMAN and top_score > 0.5:  # 2a
            prediction = (_HUMAN, top_score, "classifier")
        elif det_conf > 0.7:  # 2b: confident vehicle detection
            prediction = (_VEHICLE, det_conf, "detector")
        elif det_conf > 0.2 and top_class == _VEHICLE and top_score > 0.4:  # 2c
            prediction = (_VEHICLE, top_score, "classifier")

    if prediction is None:
        if det_conf < 0.2 and top_class == _BLANK and top_score > 0.5:  # 3a
            prediction = (_BLANK, top_score, "classifier")
        elif top_class == _BLANK and top_score > 0.99:  # 3b
            prediction = (_BLANK, top_score, "classifier")
        elif top_class not in _NOT_ANIMAL:
            if top_score > 0.8 or (  # 4a, 4b: animal classifications (geofenced)
                top_score > 0.65 and det_label == _DET_ANIMAL and det_conf > 0.2
            ):
                prediction = geofence.classify_animal(classes, scores, country, admin1_region)

    if prediction is None:
        rollup = geofence.roll_up_animal(classes, scores, country, admin1_region)  # 5a
        if rollup:
            prediction = rollup
        elif det_label == _DET_ANIMAL and det_conf > 0.5:  # 5b
            prediction = (_ANIMAL, det_conf, "detector")
        else:
            prediction = (_UNKNOWN, top_score, "classifier")

    label, score, source = prediction
    return {"class": label, "score": score, "source": source}
