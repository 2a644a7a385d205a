"""MegaDetector v5 on onnxruntime, making the decisions speciesnet 5.0.6 makes.

The reference (`speciesnet/detector.py`) letterboxes the RGB array with yolov5's
`letterbox(arr, new_shape=1280, stride=64, auto=True)`, feeds `float32(arr / 255)` as
NCHW to the yolov5 model, runs yolov5's `non_max_suppression(conf_thres=0.01)`, then
`scale_boxes(...).round()`, `xyxy2xywhn` and a centre -> top-left conversion, and sorts
the detections by confidence (stable). Each step here reproduces the reference's
arithmetic, so with the same raw model output the detections are identical.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image

from edgenet import constants
from edgenet.constants import CATEGORY_TO_LABEL
from edgenet.errors import PackError
from edgenet.letterbox import (  # noqa: F401 - re-exported: edgenet.detector API
    letterbox,
    letterbox_geometry,
    letterboxed_shape,
)
from edgenet.nms import md_bboxes_from_nms, non_max_suppression
from edgenet.providers import make_session, run_model_rows
from edgenet.unit_scale import unit_float16

# float32(x / 255) as the reference computes it in double (`arr / 255` on a uint8 array is
# float64; `.float()` rounds afterwards): float32 division is correctly rounded, so equal.
_F255 = np.float32(255)

_DETECTION_CATEGORIES = ("1", "2", "3")  # what speciesnet's Detection.from_category accepts


def _checked_images(letterboxed: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The images as arrays, all H x W x 3 uint8 of one shape, or a ValueError."""
    if len(letterboxed) == 0:
        raise ValueError("to_tensor needs at least one image")
    arrays = [np.asarray(a) for a in letterboxed]
    first = arrays[0]
    if first.dtype != np.uint8 or first.ndim != 3 or first.shape[2] != 3:
        raise ValueError(f"expected H x W x 3 uint8 images, got {first.dtype} {first.shape}")
    for a in arrays[1:]:
        if a.dtype != np.uint8 or a.shape != first.shape:
            raise ValueError(f"images differ in shape or type: {first.shape} vs {a.shape}")
    return arrays


def stack_pixels(letterboxed: Sequence[np.ndarray], rows: int | None = None) -> np.ndarray:
    """Equal-shaped letterboxed HWC uint8 images -> one NHWC uint8 batch: the detector's
    input when it converts pixels itself (`onnx_writer.unit_float_model_bytes`); ROWS as in
    `to_tensor` (zero pixels convert to the zero rows `to_tensor` writes)."""
    arrays = _checked_images(letterboxed)
    out = np.empty((max(len(arrays), rows or 0), *arrays[0].shape), dtype=np.uint8)
    out[len(arrays):] = 0  # only the padding rows: the others are overwritten below
    for i, a in enumerate(arrays):
        out[i] = a
    return out


def to_tensor(letterboxed: Sequence[np.ndarray], rows: int | None = None,
              dtype: type[np.floating] = np.float32) -> np.ndarray:
    """Equal-shaped letterboxed HWC uint8 images -> NCHW float32 in [0, 1], as the reference
    (DTYPE float16: those values rounded to float16, for fp16 packs).

    ROWS (>= the number of images): the batch is that many rows, the extra ones zero, which is
    what a fixed-size batch needs (`providers.run_fixed_batches` then pads nothing)."""
    arrays = _checked_images(letterboxed)
    h, w, _ = arrays[0].shape
    out = np.empty((max(len(arrays), rows or 0), 3, h, w), dtype=dtype)
    out[len(arrays):] = 0.0
    if out.dtype == np.float16:  # a table of the 256 values, per channel (unit_scale.py)
        for i, a in enumerate(arrays):
            for c in range(3):
                unit_float16(a[:, :, c], out[i, c])
        return out
    if out.dtype != np.float32:
        raise ValueError(f"to_tensor writes float32 or float16, not {out.dtype}")
    for i, a in enumerate(arrays):
        # float32 division of the integer values is correctly rounded, hence bit-equal to the
        # reference's float64 `/ 255` rounded to float32 (all 256 values checked in
        # tests/test_detector.py); writing straight into the NCHW output in one pass is 3-5x
        # cheaper than a lookup table plus a transposing copy (22-41 -> ~7.5 ms per 1280 x 960
        # image, benchmarks/NOTES.md entry 8): on a GPU this runs on the pipeline's one thread.
        np.divide(a.transpose(2, 0, 1), _F255, out=out[i], dtype=np.float32, casting="unsafe")
    return out


def postprocess(
    raw_one_image: np.ndarray,
    input_hw: tuple[int, int],
    orig_w: int,
    orig_h: int,
) -> list[dict[str, Any]]:
    """One image's raw yolov5 output -> speciesnet detection dicts, conf descending.

    NMS (conf 0.01, IoU 0.45, per class, <= 300 boxes), boxes mapped back to the original
    image and normalised as [xmin, ymin, width, height]. Classes beyond vehicle are dropped,
    as the reference drops categories its Detection enum does not know.
    """
    raw = np.asarray(raw_one_image)
    if raw.dtype != np.float32:
        raw = raw.astype(np.float32)  # the reference's NMS sees float32 (model.float())
    det = non_max_suppression(
        raw,
        conf_thres=constants.DETECTOR_CONF_THRESHOLD,
        iou_thres=constants.DETECTOR_IOU_THRESHOLD,
        max_det=constants.DETECTOR_MAX_DETECTIONS,
    )
    if det.shape[0] == 0:
        return []
    bboxes = md_bboxes_from_nms(det, input_hw, orig_w, orig_h).tolist()
    detections = []
    for row, bbox in zip(det.tolist(), bboxes, strict=True):
        category = str(int(row[5]) + 1)
        if category not in _DETECTION_CATEGORIES:
            continue
        detections.append(
            {"category": category, "label": CATEGORY_TO_LABEL[category], "conf": row[4],
             "bbox": bbox}
        )
    # NMS output is already conf-descending; a stable sort keeps it so, as the reference.
    detections.sort(key=lambda d: d["conf"], reverse=True)
    return detections


class DetectorModel:
    """An ONNX MegaDetector (yolov5) session with the reference's pre- and post-processing.

    The ONNX graph takes (N, 3, H, W) letterboxed/255 (float32, or float16 for fp16 packs)
    and returns yolov5's raw predictions (N, rows, 5 + classes) as output 0.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str = "auto",
        threads: int | None = None,
        precision: str = "fp32",
        session: Any | None = None,
    ) -> None:
        self.path = path
        self.session = session if session is not None else make_session(
            path, device=device, threads=threads, precision=precision)
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise PackError(
                "detector must have one 4-D image input (N, 3, H, W), found "
                + ", ".join(f"{i.name}{list(i.shape)}" for i in inputs),
                path=path,
                fix="convert the MegaDetector checkpoint with `edgenet convert detector`",
            )
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        # Images per session run, padded (set by the pipeline on GPU providers, see
        # `edgenet.providers.SHAPE_SENSITIVE_PROVIDERS`). None: whatever arrives.
        self.fixed_batch: int | None = None
        # uint8 pixels in, converted by a second session on the same provider (set by the
        # pipeline: `EDGENET_DEVICE_PIXELS`; `providers.run_model_rows` runs both).
        self.device_pixels = False
        self._pixels_session: Any | None = None
        if inputs[0].type == "tensor(float16)":
            self.input_dtype: type[np.floating] = np.float16
        elif inputs[0].type == "tensor(float)":
            self.input_dtype = np.float32
        else:
            raise PackError(
                f"detector input {self.input_name!r} has type {inputs[0].type}, expected "
                "float32 or float16",
                path=path,
                fix="convert the MegaDetector checkpoint with `edgenet convert detector`",
            )

    def preprocess(self, img: PIL.Image.Image) -> np.ndarray:
        """Letterboxed HWC uint8 RGB array of a PIL image (converted to RGB if needed)."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        return letterbox(np.asarray(img))

    def to_tensor(self, letterboxed: Sequence[np.ndarray]) -> np.ndarray:
        """Equal-shaped letterboxed images -> the model's input batch: NCHW in the model's
        input type (module `to_tensor`), or NHWC uint8 pixels when `device_pixels` is set.
        With `fixed_batch`, a partial batch comes out at that size with zero rows (built in
        place: no padded copy later); callers read the first len(letterboxed) rows."""
        rows = self.fixed_batch if self.fixed_batch and len(letterboxed) < self.fixed_batch \
            else None
        if self.device_pixels:
            return stack_pixels(letterboxed, rows)
        return to_tensor(letterboxed, rows, self.input_dtype)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Raw predictions (N, rows, 5 + classes) as float32 for an NCHW float batch or, from
        `to_tensor` with `device_pixels`, an NHWC uint8 one."""
        batch = np.asarray(batch)
        if batch.dtype not in (np.uint8, self.input_dtype):
            batch = batch.astype(self.input_dtype)
        raw = run_model_rows(self, batch, "detector", nchw=True)
        return raw if raw.dtype == np.float32 else raw.astype(np.float32)

    @staticmethod
    def postprocess(
        raw_one_image: np.ndarray, input_hw: tuple[int, int], orig_w: int, orig_h: int
    ) -> list[dict[str, Any]]:
        """Detection dicts for one image (see module `postprocess`)."""
        return postprocess(raw_one_image, input_hw, orig_w, orig_h)

    def detect(self, img: PIL.Image.Image) -> list[dict[str, Any]]:
        """Detections for one image, end to end."""
        boxed = self.preprocess(img)
        raw = self.infer(self.to_tensor([boxed]))
        return self.postprocess(raw[0], boxed.shape[:2], img.width, img.height)
