"""yolov5's letterbox, as speciesnet 5.0.6's detector applies it before MegaDetector.

Its own module, importing only numpy and OpenCV, because decode workers letterbox every image:
importing it through `edgenet.detector` would load onnxruntime in each worker for nothing
(~20 MB of resident memory and ~30 ms of start-up per worker).
"""

from __future__ import annotations

import cv2
import numpy as np

from edgenet import constants


def letterbox_geometry(
    height: int,
    width: int,
    new_shape: int = constants.DETECTOR_IMG_SIZE,
    stride: int = constants.DETECTOR_STRIDE,
) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """yolov5 letterbox's resized size (w, h) and borders (top, bottom, left, right).

    auto=True (minimal padding to a stride multiple), scaleup=True. Exposed so callers can
    know a letterboxed shape (e.g. to batch equal shapes) without resizing anything.
    """
    r = min(new_shape / height, new_shape / width)
    new_w, new_h = int(round(width * r)), int(round(height * r))
    dw = float((new_shape - new_w) % stride) / 2
    dh = float((new_shape - new_h) % stride) / 2
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    return (new_w, new_h), (top, bottom, left, right)


def letterboxed_shape(height: int, width: int) -> tuple[int, int]:
    """(H, W) of the detector input for an image of this size."""
    (new_w, new_h), (top, bottom, left, right) = letterbox_geometry(height, width)
    return new_h + top + bottom, new_w + left + right


def letterbox(
    rgb: np.ndarray,
    new_shape: int = constants.DETECTOR_IMG_SIZE,
    stride: int = constants.DETECTOR_STRIDE,
    color: int = constants.LETTERBOX_PAD_VALUE,
) -> np.ndarray:
    """yolov5 `letterbox(im, new_shape=1280, stride=64, auto=True)[0]` on an RGB HWC array.

    Resizes the long side to `new_shape` (small images are upscaled) with cv2 INTER_LINEAR,
    then pads with `color` to the nearest multiple of `stride`. The same cv2 kernel as the
    reference is used because its fixed-point uint8 interpolation is what the model saw.
    """
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
        raise ValueError(f"letterbox expects an HxW[xC] uint8 array, got {arr.dtype} {arr.shape}")
    h, w = arr.shape[:2]
    (new_w, new_h), (top, bottom, left, right) = letterbox_geometry(h, w, new_shape, stride)
    if (w, h) != (new_w, new_h):
        arr = cv2.resize(arr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    # yolov5 passes a 3-tuple whatever the channel count (a 4th channel would be padded 0).
    value = (color, color, color)
    return cv2.copyMakeBorder(arr, top, bottom, left, right, cv2.BORDER_CONSTANT, value=value)
