"""Fidelity of one ONNX graph against another on the same inputs (variants vs fp32).

Why these measures: what a user of a pack sees is detections after NMS and the classifier's
top classes, not raw tensors. Raw max-abs/relative differences are reported too (they are
what catches a broken conversion), but the numbers a user chooses a variant by are:

* detector: after yolov5 NMS (edgenet.nms, the runtime's own code), how many reference
  detections have a partner in the variant (same category, IoU > 0.5), how many extra or
  missing ones there are, and how much the confidences of matched pairs move; given both
  for all detections (conf >= 0.01, what NMS keeps) and for the ones the ensemble actually
  uses (conf >= 0.1, speciesnet's classification threshold);
* classifier: top-1 agreement, top-5 set overlap, and the largest softmax-probability change.

Inputs are real camera-trap images (letterboxed for the detector, resized whole images for the
classifier) when `../shared/images` or a user folder is available, else smooth synthetic
images (reported as such). Only numpy, PIL, cv2 and onnxruntime are used here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp"}
MATCH_IOU = 0.5
USED_CONF = 0.1  # speciesnet classifies detections at or above this confidence


# --------------------------------------------------------------------------------------------
# images


def default_image_dirs() -> list[Path]:
    """`../shared/images/*` next to this checkout (test and calibration images), if present."""
    env = os.environ.get("EDGENET_SHARED_DIR")
    root = (Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared") / "images"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir())


def find_images(sources: Iterable[Path]) -> list[Path]:
    """Image files under SOURCES (files or folders), sorted for reproducibility."""
    found: list[Path] = []
    for src in sources:
        src = Path(src)
        if src.is_file() and src.suffix.lower() in IMAGE_SUFFIXES:
            found.append(src)
        elif src.is_dir():
            found.extend(
                p for p in sorted(src.rglob("*"))
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
    return found


def load_images(
    sources: Iterable[Path] | None = None, limit: int = 8, max_side: int = 1600
) -> tuple[list[np.ndarray], list[str]]:
    """Up to LIMIT decodable RGB uint8 images, spread evenly over what SOURCES hold.

    Undecodable files (the shared set has a zero-byte and a truncated JPEG on purpose) are
    skipped. Large images are downscaled to MAX_SIDE first, only to bound memory: the
    comparisons run both graphs on the same pixels, so exact preprocessing does not matter.
    """
    from PIL import Image, ImageOps

    paths = find_images(default_image_dirs() if sources is None else sources)
    if limit and len(paths) > limit:
        step = len(paths) / limit
        ordered = [paths[int(i * step)] for i in range(limit)]
        ordered += [p for p in paths if p not in ordered]  # fall back on the rest
    else:
        ordered = paths
    images: list[np.ndarray] = []
    names: list[str] = []
    for path in ordered:
        if limit and len(images) >= limit:
            break
        try:
            with Image.open(path) as im:
                im.load()
                im = ImageOps.exif_transpose(im).convert("RGB")
                if max(im.size) > max_side:
                    im.thumbnail((max_side, max_side), Image.BILINEAR)
                images.append(np.asarray(im, dtype=np.uint8).copy())
                names.append(path.name)
        except Exception:  # noqa: BLE001 - any undecodable image is simply not used
            continue
    return images, names


def synthetic_images(count: int = 4, size: tuple[int, int] = (720, 960), seed: int = 0
                     ) -> list[np.ndarray]:
    """Smooth random scenes (low-frequency noise, some blobs) when no real images exist.

    Pure noise would drive BatchNorm'd activations unlike any photo; smooth fields with
    edges are a crude but better stand-in for calibration.
    """
    import cv2

    rng = np.random.default_rng(seed)
    out = []
    h, w = size
    for _ in range(count):
        small = rng.uniform(0, 255, size=(h // 32 + 1, w // 32 + 1, 3)).astype(np.float32)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        for _ in range(int(rng.integers(2, 6))):
            cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
            axes = (int(rng.integers(20, w // 4)), int(rng.integers(20, h // 4)))
            color = tuple(float(c) for c in rng.uniform(0, 255, 3))
            cv2.ellipse(img, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, color, -1)
        img += rng.normal(0, 6, size=img.shape).astype(np.float32)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def letterbox(rgb: np.ndarray, size: int = 1280, stride: int = 64) -> np.ndarray:
    """yolov5-style letterbox (`auto=True`: pad only to a multiple of STRIDE), HWC uint8."""
    import cv2

    h, w = rgb.shape[:2]
    r = min(size / h, size / w)
    new_w, new_h = int(round(w * r)), int(round(h * r))
    dw, dh = (size - new_w) % stride, (size - new_h) % stride
    if (new_w, new_h) != (w, h):
        rgb = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh / 2 - 0.1)), int(round(dh / 2 + 0.1))
    left, right = int(round(dw / 2 - 0.1)), int(round(dw / 2 + 0.1))
    return cv2.copyMakeBorder(rgb, top, bottom, left, right, cv2.BORDER_CONSTANT,
                              value=(114, 114, 114))


def detector_inputs(images: Sequence[np.ndarray], size: int = 1280) -> list[np.ndarray]:
    """One (1, 3, H, W) float32 tensor in [0, 1] per image (shapes differ, so no batching)."""
    out = []
    for img in images:
        lb = letterbox(img, size)
        out.append(np.ascontiguousarray(lb.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0)
    return out


def classifier_inputs(images: Sequence[np.ndarray], size: int = 480) -> np.ndarray:
    """(N, SIZE, SIZE, 3) float32 in [0, 1]: whole images squashed to the crop size."""
    from PIL import Image

    arrs = []
    for img in images:
        im = Image.fromarray(img).resize((size, size), Image.BILINEAR)
        arrs.append(np.asarray(im, dtype=np.float32) / 255.0)
    return np.stack(arrs) if arrs else np.zeros((0, size, size, 3), np.float32)


# --------------------------------------------------------------------------------------------
# running graphs


def session(path: Path, threads: int | None = None) -> Any:
    """A CPU onnxruntime session (fidelity is measured on CPU so results are reproducible)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run(sess: Any, x: np.ndarray) -> np.ndarray:
    """First output of SESS for a single float32 input X."""
    name = sess.get_inputs()[0].name
    return np.asarray(sess.run(None, {name: x})[0], dtype=np.float32)


def run_batched(sess: Any, x: np.ndarray, batch: int = 4) -> np.ndarray:
    if len(x) == 0:
        return np.zeros((0,), np.float32)
    return np.concatenate([run(sess, x[i:i + batch]) for i in range(0, len(x), batch)])


# --------------------------------------------------------------------------------------------
# comparisons


def raw_diff(ref: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """max |ref - test|, and that relative to max |ref| (the scale of the outputs)."""
    ref = np.asarray(ref, np.float64)
    test = np.asarray(test, np.float64)
    if ref.shape != test.shape:
        raise ValueError(f"output shapes differ: {ref.shape} vs {test.shape}")
    if ref.size == 0:
        return {"max_abs": 0.0, "max_rel": 0.0, "mean_abs": 0.0}
    diff = np.abs(ref - test)
    scale = float(np.max(np.abs(ref))) or 1.0
    return {
        "max_abs": float(diff.max()),
        "max_rel": float(diff.max() / scale),
        "mean_abs": float(diff.mean()),
    }


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of xyxy boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_detections(ref: np.ndarray, test: np.ndarray, iou: float = MATCH_IOU
                     ) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching (by descending reference confidence) of NMS rows
    [x1, y1, x2, y2, conf, cls]: same class and IoU > IOU. Returns (i_ref, i_test, iou)."""
    ious = box_iou(ref[:, :4], test[:, :4])
    used: set[int] = set()
    pairs = []
    for i in np.argsort(-ref[:, 4], kind="stable") if len(ref) else []:
        best, best_j = iou, -1
        for j in range(len(test)):
            if j in used or int(test[j, 5]) != int(ref[i, 5]):
                continue
            if ious[i, j] > best:
                best, best_j = ious[i, j], j
        if best_j >= 0:
            used.add(best_j)
            pairs.append((int(i), best_j, float(best)))
    return pairs


def _nms(raw_one: np.ndarray) -> np.ndarray:
    from edgenet.nms import non_max_suppression

    return non_max_suppression(np.asarray(raw_one, np.float32))


def detection_agreement(ref_raw: Sequence[np.ndarray], test_raw: Sequence[np.ndarray],
                        min_conf: float = 0.0) -> dict[str, Any]:
    """Agreement of detections after NMS over several images (rows above MIN_CONF only)."""
    n_ref = n_test = matched = 0
    conf_diffs: list[float] = []
    ious: list[float] = []
    for r_raw, t_raw in zip(ref_raw, test_raw, strict=True):
        r, t = _nms(r_raw), _nms(t_raw)
        r, t = r[r[:, 4] >= min_conf], t[t[:, 4] >= min_conf]
        pairs = match_detections(r, t)
        n_ref += len(r)
        n_test += len(t)
        matched += len(pairs)
        conf_diffs += [abs(float(r[i, 4]) - float(t[j, 4])) for i, j, _ in pairs]
        ious += [v for _, _, v in pairs]
    return {
        "min_conf": min_conf,
        "reference_detections": n_ref,
        "variant_detections": n_test,
        "matched": matched,
        "recall": matched / n_ref if n_ref else 1.0,
        "precision": matched / n_test if n_test else 1.0,
        "max_conf_diff": max(conf_diffs) if conf_diffs else 0.0,
        "mean_conf_diff": float(np.mean(conf_diffs)) if conf_diffs else 0.0,
        "min_matched_iou": min(ious) if ious else 1.0,
    }


def _softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def classification_agreement(ref_logits: np.ndarray, test_logits: np.ndarray, k: int = 5
                             ) -> dict[str, Any]:
    """Top-1 agreement, top-k set overlap and softmax change between two logit arrays."""
    ref_logits = np.asarray(ref_logits)
    test_logits = np.asarray(test_logits)
    n = len(ref_logits)
    if n == 0:
        return {"samples": 0, "top1_agreement": 1.0, "top5_overlap": 1.0,
                "top1_in_top5": 1.0, "max_prob_diff": 0.0}
    k = min(k, ref_logits.shape[1])
    r_top = np.argsort(-ref_logits, axis=1, kind="stable")[:, :k]
    t_top = np.argsort(-test_logits, axis=1, kind="stable")[:, :k]
    overlap = [len(set(a) & set(b)) / k for a, b in zip(r_top, t_top, strict=True)]
    return {
        "samples": int(n),
        "top1_agreement": float(np.mean(r_top[:, 0] == t_top[:, 0])),
        "top5_overlap": float(np.mean(overlap)),
        "top1_in_top5": float(np.mean([a[0] in b for a, b in zip(r_top, t_top, strict=True)])),
        "max_prob_diff": float(np.max(np.abs(_softmax(ref_logits) - _softmax(test_logits)))),
    }


def compare_detectors(ref_onnx: Path, test_onnx: Path, inputs: Sequence[np.ndarray]
                      ) -> dict[str, Any]:
    """Detector variant vs reference graph on the same letterboxed inputs."""
    ref_s, test_s = session(ref_onnx), session(test_onnx)
    ref_raw = [run(ref_s, x)[0] for x in inputs]
    test_raw = [run(test_s, x)[0] for x in inputs]
    diffs = [raw_diff(a, b) for a, b in zip(ref_raw, test_raw, strict=True)]
    # Boxes are in pixels and conf/class scores in [0, 1]: report them separately.
    box = [raw_diff(a[:, :4], b[:, :4]) for a, b in zip(ref_raw, test_raw, strict=True)]
    score = [raw_diff(a[:, 4:], b[:, 4:]) for a, b in zip(ref_raw, test_raw, strict=True)]
    return {
        "images": len(inputs),
        "input_shapes": [list(x.shape) for x in inputs],
        "raw": _worst(diffs),
        "raw_boxes_px": _worst(box),
        "raw_scores": _worst(score),
        "detections_all": detection_agreement(ref_raw, test_raw, 0.0),
        "detections_used": detection_agreement(ref_raw, test_raw, USED_CONF),
    }


def compare_classifiers(ref_onnx: Path, test_onnx: Path, inputs: np.ndarray) -> dict[str, Any]:
    """Classifier variant vs reference graph on the same NHWC inputs."""
    ref = run_batched(session(ref_onnx), inputs)
    test = run_batched(session(test_onnx), inputs)
    return {"samples": int(len(inputs)), "raw": raw_diff(ref, test),
            **{k: v for k, v in classification_agreement(ref, test).items() if k != "samples"}}


def _worst(diffs: Sequence[dict[str, float]]) -> dict[str, float]:
    if not diffs:
        return {"max_abs": 0.0, "max_rel": 0.0, "mean_abs": 0.0}
    return {
        "max_abs": max(d["max_abs"] for d in diffs),
        "max_rel": max(d["max_rel"] for d in diffs),
        "mean_abs": float(np.mean([d["mean_abs"] for d in diffs])),
    }


def finite(report: Any) -> Any:
    """REPORT with NaN/inf replaced by strings, so json.dump writes valid JSON."""
    if isinstance(report, dict):
        return {k: finite(v) for k, v in report.items()}
    if isinstance(report, list | tuple):
        return [finite(v) for v in report]
    if isinstance(report, float) and not math.isfinite(report):
        return str(report)
    if isinstance(report, np.generic):
        return finite(report.item())
    return report
