"""Constants shared by every stage; values mirror speciesnet 5.0.6 (`speciesnet/constants.py`)."""

from __future__ import annotations

import enum

# Output format written by speciesnet 5.0.6 ("info.format_version" of a predictions file).
FORMAT_VERSION = "20261015"

# Detections at or above this confidence are classified (speciesnet default).
DEFAULT_DETECTION_THRESHOLD_FOR_CLASSIFICATION = 0.1
# Top classes reported in each detection's raw classifications.
DEFAULT_MAX_CLASSIFICATIONS_PER_DETECTION = 2
# Top classes the ensemble looks at, whatever is reported.
NUM_CLASSIFICATIONS_FOR_ENSEMBLE = 5
# Floats in predictions files are rounded to this many decimals.
OUTPUT_DECIMALS = 4

# Detector constants (MegaDetector v5 as speciesnet runs it).
DETECTOR_IMG_SIZE = 1280
DETECTOR_STRIDE = 64
DETECTOR_CONF_THRESHOLD = 0.01
DETECTOR_IOU_THRESHOLD = 0.45
DETECTOR_MAX_DETECTIONS = 300
LETTERBOX_PAD_VALUE = 114

# Classifier constants.
CLASSIFIER_IMG_SIZE = 480
FULL_IMAGE_MAX_CROP_RATIO = 0.3
FULL_IMAGE_MAX_CROP_SIZE = 400

# Image file extensions discovered in folders (speciesnet's IMG_EXTENSIONS; matched in the
# same mixed case set, i.e. all-lower or all-upper only, as the reference globs them).
IMG_EXTENSIONS = (
    "jpg", "JPG", "jpeg", "JPEG", "png", "PNG", "tif", "TIF", "tiff", "TIFF", "webp", "WEBP",
)


class Classification(str, enum.Enum):
    """Labels with a special meaning in the ensemble."""

    BLANK = "f1856211-cfb7-4a5b-9158-c0f72fd09ee6;;;;;;blank"
    ANIMAL = "1f689929-883d-4dae-958c-3d57ab5b6c16;;;;;;animal"
    HUMAN = "990ae9dd-7a59-4344-afcb-1b7b21368000;mammalia;primates;hominidae;homo;sapiens;human"
    VEHICLE = "e2895ed5-780b-48f6-8a11-9e27cb594511;;;;;;vehicle"
    UNKNOWN = (
        "f2efdae9-efb8-48fb-8a91-eccf79ab4ffb;no cv result;no cv result;no cv result;"
        "no cv result;no cv result;no cv result"
    )


class DetectionLabel(str, enum.Enum):
    """Detection labels keyed by MegaDetector category ("0" is the whole-image pseudo-box)."""

    WHOLE_IMAGE = "whole_image_classification"
    ANIMAL = "animal"
    HUMAN = "human"
    VEHICLE = "vehicle"


CATEGORY_TO_LABEL: dict[str, str] = {
    "0": DetectionLabel.WHOLE_IMAGE.value,
    "1": DetectionLabel.ANIMAL.value,
    "2": DetectionLabel.HUMAN.value,
    "3": DetectionLabel.VEHICLE.value,
}


class Failure(enum.Flag):
    """Component failures, reported by name in a prediction's "failures" list, in this order."""

    CLASSIFIER = enum.auto()
    DETECTOR = enum.auto()
    GEOLOCATION = enum.auto()


def failure_names(failure: Failure) -> list[str]:
    """Names of the set flags, in declaration order (as speciesnet lists them)."""
    return [f.name for f in Failure if f in failure and f.name]
