"""MegaDetector v5 (YOLOv5, PyTorch) -> ONNX, proven numerically before the file is written.

Why this shape: the runtime (edgenet/detector.py) feeds `images` (N, 3, H, W) float32 in [0, 1]
(yolov5 letterbox at 1280, stride 64, so H and W vary per image) and reads the raw decoded
predictions (N, rows, 5 + nc) that speciesnet hands to yolov5's NMS. So we export exactly
`model(x)[0]` of the eval-mode model, with N/H/W dynamic and the grids rebuilt from the input
shape inside the graph.

Exporter: the TorchScript-based `torch.onnx.export(..., dynamo=False)` is used. Measured with
torch 2.14.1: it still exists (deprecated but working), traces this model in seconds, keeps
H/W symbolic (Shape -> Range -> grid) and yields a single self-contained file. The dynamo
exporter needs onnxscript and `dynamic_shapes` with stride-64 constraints and was not needed.

Fidelity: the same inputs (random tensors of several shapes and batch sizes, and real
letterboxed camera-trap images when available) go through torch fp32 (the reference, i.e.
`checkpoint["model"].float()` as speciesnet runs it), a torch fp64 copy (to measure how far fp32
itself is from exact arithmetic) and onnxruntime. The report gives max abs / relative
differences of the raw outputs and the agreement of detections after yolov5 NMS; the conversion
fails (and writes nothing) when ONNX differs from torch fp32 beyond the tolerance.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converters.errors import ConvertError
from converters.onnx_meta import stamp_onnx_file

# Relative tolerance on raw outputs: box differences relative to the input extent (max(H, W)
# px) and score differences (scores lie in [0, 1]) must stay below it. Why 1e-4: fp32 itself
# (torch fp32 vs fp64, measured on every conversion and reported) is ~1e-6 relative in early
# layers and ~1e-5 at the head of this ~100-layer network; two fp32 implementations (torch,
# onnxruntime) summing in different orders differ by about as much. 1e-4 leaves headroom for
# kernel choices while a wrong op (bad padding, wrong grid, swapped anchors) costs whole pixels
# (>= 1e-3 of 1280 px) or whole score points.
DEFAULT_RTOL = 1e-4
# After NMS every detection at or above this confidence must be found in both (same class,
# IoU > 0.5): speciesnet classifies detections from 0.1 on, so these are the ones that matter.
AGREEMENT_MIN_CONF = 0.1
# Boxes within 1e-3 relative to the input extent after NMS (sub-pixel: the reference rounds
# boxes to whole pixels of the original image).
DEFAULT_BOX_TOL_PX = 0.05
# Two fp32 implementations differ from each other by about as much as each differs from
# fp64 (times ~sqrt(2)); 4x that drift is generous yet far below what a wrong op produces.
DRIFT_FACTOR = 4.0
# The converted graph's description (ModelProto.doc_string).
_DOC_STRING = "MegaDetector v5 (YOLOv5) raw predictions; converted by edgenet"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    out = {"torch": torch.__version__, "onnx": onnx.__version__,
           "onnxruntime": onnxruntime.__version__}
    try:
        from importlib.metadata import version

        out["edgenet"] = version("edgenet")
    except Exception:  # noqa: BLE001 - not installed as a distribution (source checkout)
        out["edgenet"] = "source"
    return out


# --------------------------------------------------------------------------------------------
# preprocessing and NMS (edgenet's runtime code when present, else faithful local copies)
# --------------------------------------------------------------------------------------------


def letterbox_rgb(rgb: np.ndarray, size: int = 1280, stride: int = 64) -> np.ndarray:
    """yolov5 letterbox(new_shape=size, stride=stride, auto=True)[0] of an RGB uint8 image."""
    try:
        from edgenet.letterbox import letterbox

        return letterbox(rgb, size, stride)
    except ImportError:
        pass
    import cv2

    h, w = rgb.shape[:2]
    r = min(size / h, size / w)
    new_w, new_h = int(round(w * r)), int(round(h * r))
    dw, dh = float((size - new_w) % stride) / 2, float((size - new_h) % stride) / 2
    if (w, h) != (new_w, new_h):
        rgb = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    return cv2.copyMakeBorder(rgb, top, bottom, left, right, cv2.BORDER_CONSTANT,
                              value=(114, 114, 114))


def to_nchw(letterboxed: np.ndarray) -> np.ndarray:
    """HWC uint8 -> (1, 3, H, W) float32 as speciesnet: float64 `arr / 255`, then `.float()`."""
    return np.ascontiguousarray((letterboxed / 255).transpose(2, 0, 1)[None]).astype(np.float32)


def load_rgb(path: Path) -> np.ndarray | None:
    """Decode an image as the reference does; None when it cannot be decoded."""
    try:
        from edgenet.images import load_rgb_image

        return np.asarray(load_rgb_image(str(path)))
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - undecodable test images are skipped
        return None
    try:
        from PIL import Image, ImageOps

        with Image.open(path) as im:
            im.load()
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except Exception:  # noqa: BLE001
        return None


def default_check_images(limit: int = 3) -> list[Path]:
    """A few real camera-trap images from ../shared/images next to the checkout, if present."""
    root = Path(__file__).resolve().parents[1].parent / "shared" / "images"
    preferred = ["speciesnet_test_data/african_elephants.jpg",
                 "speciesnet_test_data/ocelot.jpg", "speciesnet_test_data/human.jpg",
                 "camera_trap_extra/md_idaho_cougar.jpg", "speciesnet_test_data/blank.jpg"]
    found = [root / p for p in preferred if (root / p).is_file()]
    if len(found) < limit and root.is_dir():
        found += sorted(p for p in root.rglob("*.jpg") if p not in found)
    return found[:limit]


def yolov5_nms(pred: np.ndarray, conf_thres: float = 0.01, iou_thres: float = 0.45,
               max_det: int = 300) -> np.ndarray:
    """yolov5 non_max_suppression for one image's (rows, 5+nc) -> (K, 6) xyxy, conf, cls."""
    try:
        from edgenet.nms import non_max_suppression

        return non_max_suppression(np.asarray(pred), conf_thres, iou_thres, max_det)
    except ImportError:
        return torch_nms(np.asarray(pred), conf_thres, iou_thres, max_det)


def torch_nms(pred: np.ndarray, conf_thres: float = 0.01, iou_thres: float = 0.45,
              max_det: int = 300) -> np.ndarray:
    """yolov5's algorithm with torchvision.ops.nms (fast; used to tune synthetic heads)."""
    import torch
    import torchvision

    x = torch.from_numpy(np.ascontiguousarray(pred))
    x = x[x[:, 4] > conf_thres]
    if not x.shape[0]:
        return np.zeros((0, 6), pred.dtype)
    x = x.clone()
    x[:, 5:] *= x[:, 4:5]
    box = torch.empty_like(x[:, :4])
    box[:, 0] = x[:, 0] - x[:, 2] / 2
    box[:, 1] = x[:, 1] - x[:, 3] / 2
    box[:, 2] = x[:, 0] + x[:, 2] / 2
    box[:, 3] = x[:, 1] + x[:, 3] / 2
    conf, j = x[:, 5:].max(1, keepdim=True)
    x = torch.cat((box, conf, j.to(x.dtype)), 1)[conf.view(-1) > conf_thres]
    if not x.shape[0]:
        return np.zeros((0, 6), pred.dtype)
    x = x[x[:, 4].argsort(descending=True)[:30000]]
    c = x[:, 5:6] * 7680
    keep = torchvision.ops.nms(x[:, :4] + c, x[:, 4], iou_thres)[:max_det]
    return x[keep].numpy()


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    a, b = a.astype(np.float64), b.astype(np.float64)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:4] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:4] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def compare_detections(ref: np.ndarray, test: np.ndarray, min_conf: float = AGREEMENT_MIN_CONF
                       ) -> dict[str, Any]:
    """Agreement of two NMS outputs (K, 6): matched pairs (same class, IoU > 0.5) and diffs.

    A reference detection at or above MIN_CONF without a partner (or vice versa) is a
    disagreement that matters; below MIN_CONF, boxes at the 0.01 NMS threshold may
    legitimately flip and are only counted.
    """
    ious = _box_iou(ref[:, :4], test[:, :4])
    used: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for i in np.argsort(-ref[:, 4], kind="stable"):
        cand = [(ious[i, j], j) for j in range(len(test))
                if j not in used and int(test[j, 5]) == int(ref[i, 5]) and ious[i, j] > 0.5]
        if cand:
            j = max(cand)[1]
            used.add(j)
            pairs.append((int(i), j))
    box_diff = max((float(np.abs(ref[i, :4].astype(np.float64) - test[j, :4]).max())
                    for i, j in pairs), default=0.0)
    conf_diff = max((abs(float(ref[i, 4]) - float(test[j, 4])) for i, j in pairs), default=0.0)
    matched_ref = {i for i, _ in pairs}
    matched_test = {j for _, j in pairs}
    return {
        "reference": len(ref),
        "test": len(test),
        "matched": len(pairs),
        "unmatched_at_or_above_min_conf": int(
            sum(1 for i in range(len(ref)) if i not in matched_ref and ref[i, 4] >= min_conf)
            + sum(1 for j in range(len(test)) if j not in matched_test and test[j, 4] >= min_conf)
        ),
        "same_order": bool(len(ref) == len(test) and all(i == j for i, j in pairs)
                           and len(pairs) == len(ref)),
        "max_box_abs_px": box_diff,
        "max_conf_abs": conf_diff,
    }


def raw_diff(ref: np.ndarray, test: np.ndarray, extent: float | None = None
             ) -> dict[str, float]:
    """Differences of raw predictions (N, rows, 5+nc): boxes in px, scores in [0, 1].

    `max_rel` puts both on one scale: box differences relative to the input's extent
    (max(H, W) px, what a box coordinate can span) and score differences as they are
    (scores are already relative to their range [0, 1]).
    """
    ref = np.asarray(ref, np.float64)
    test = np.asarray(test, np.float64)
    if ref.shape != test.shape:
        raise ConvertError(f"output shapes differ: {ref.shape} vs {test.shape}")
    d = np.abs(ref - test)
    extent = float(extent or max(1.0, float(np.abs(ref[..., :4]).max(initial=1.0))))
    box, conf = float(d[..., :4].max(initial=0.0)), float(d[..., 4:].max(initial=0.0))
    return {
        "max_abs": max(box, conf),
        "max_rel": max(box / extent, conf),
        "box_max_abs_px": box,
        "box_max_rel_to_box": float((d[..., :4] / np.maximum(np.abs(ref[..., :4]), 1.0))
                                    .max(initial=0.0)),
        "conf_max_abs": conf,
    }


def _merge_diffs(diffs: Sequence[dict[str, float]]) -> dict[str, float]:
    return {k: max(d[k] for d in diffs) for k in diffs[0]} if diffs else {}


def _merge_agreements(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    if not items:
        return {}
    out: dict[str, Any] = {}
    for k in ("reference", "test", "matched", "unmatched_at_or_above_min_conf"):
        out[k] = int(sum(a[k] for a in items))
    out["same_order"] = all(a["same_order"] for a in items)
    out["max_box_abs_px"] = max(a["max_box_abs_px"] for a in items)
    out["max_conf_abs"] = max(a["max_conf_abs"] for a in items)
    return out


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------


def _export_module(model: Any) -> Any:
    """Wrap the model so the graph returns only the decoded predictions (output 0)."""
    import torch

    class _Raw(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.inner(images)[0]

    det = model.model[-1]
    det.dynamic = True  # grids from the traced input shape, never a cached constant
    return _Raw(model).eval()


def export_onnx(model: Any, dst: Path, opset: int = 17) -> None:
    """torch.onnx.export (TorchScript exporter) with N, H, W dynamic."""
    import torch

    wrapper = _export_module(model)
    dummy = torch.zeros(1, 3, 320, 256)
    with torch.no_grad():
        torch.onnx.export(
            wrapper, (dummy,), str(dst), dynamo=False, opset_version=opset,
            input_names=["images"], output_names=["predictions"],
            dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                          "predictions": {0: "batch", 1: "rows"}},
            do_constant_folding=True,
        )


def _session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _torch_run(model: Any, x: np.ndarray, dtype: Any) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x).to(dtype))[0].numpy()


def verify(model: Any, onnx_path: Path, *, check_images: Sequence[Path] | None = None,
           rtol: float = DEFAULT_RTOL, box_tol_px: float = DEFAULT_BOX_TOL_PX,
           random_shapes: Sequence[tuple[int, int, int]] = ((2, 256, 320), (1, 384, 192)),
           img_size: int = 1280, seed: int = 0, yolov5_model: Any | None = None
           ) -> dict[str, Any]:
    """Run torch fp32, torch fp64 and onnxruntime on the same inputs; return the report.

    Does not raise: `report["passed"]` and `report["failures"]` say whether ONNX is within
    tolerance. `yolov5_model`, when given (the same checkpoint loaded with yolov5's own classes),
    is compared with our modules too: the two torch fp32 outputs must be identical.
    """
    import torch

    t0 = time.time()
    model64 = copy.deepcopy(model).double().eval()
    sess = _session(onnx_path)
    rng = np.random.default_rng(seed)
    inputs: list[tuple[str, np.ndarray]] = []
    for n, h, w in random_shapes:
        # Smooth random images (coarse noise, bilinear upsampled): pixel-wise uniform noise is
        # so far from any photo that a BatchNorm'd net's activations blow up on it, and the
        # comparison would measure that blow-up instead of the conversion.
        coarse = torch.from_numpy(rng.random((n, 3, max(1, h // 32), max(1, w // 32)),
                                             dtype=np.float32))
        x = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear",
                                            align_corners=False).numpy()
        inputs.append((f"random_{n}x{h}x{w}", np.ascontiguousarray(x)))
    used_images: list[str] = []
    for p in check_images or []:
        rgb = load_rgb(Path(p))
        if rgb is None:
            continue
        inputs.append((Path(p).name, to_nchw(letterbox_rgb(rgb, img_size))))
        used_images.append(Path(p).name)

    onnx_vs_32, drift_64, yolo_diffs = [], [], []
    agree_onnx, agree_64 = [], []
    per_input = []
    for name, x in inputs:
        ref32 = _torch_run(model, x, torch.float32)
        # fp64 for every input (~2x an fp32 forward on CPU): each input's own fp32 drift
        # bounds how close two fp32 implementations can be expected to agree on it.
        ref64 = _torch_run(model64, x, torch.float64)
        out = sess.run(None, {"images": x})[0]
        extent = float(max(x.shape[2:]))
        d = raw_diff(ref32, out, extent)
        onnx_vs_32.append(d)
        drift_64.append(raw_diff(ref64, ref32, extent))
        d["tolerance"] = max(rtol, DRIFT_FACTOR * drift_64[-1]["max_rel"])
        if yolov5_model is not None:
            yolo_diffs.append(raw_diff(_torch_run(yolov5_model, x, torch.float32), ref32,
                                       extent))
        entry = {"input": name, "shape": list(x.shape), "onnx_vs_torch32": d}
        if not name.startswith("random_"):
            for b in range(x.shape[0]):
                n32 = yolov5_nms(ref32[b])
                a = compare_detections(n32, yolov5_nms(out[b]))
                agree_onnx.append(a)
                if ref64 is not None:
                    agree_64.append(compare_detections(
                        yolov5_nms(ref64[b].astype(np.float64)), n32))
                entry["detections_torch32"] = len(n32)
                entry["detections_torch32_at_0.1"] = int((n32[:, 4] >= AGREEMENT_MIN_CONF).sum())
        per_input.append(entry)

    onnx_diff = _merge_diffs(onnx_vs_32)
    agreement = _merge_agreements(agree_onnx)
    drift = _merge_diffs(drift_64)
    drift_nms = _merge_agreements(agree_64)
    # ONNX cannot be expected closer to torch fp32 than fp32 itself is to exact arithmetic:
    # where the model's own fp32 drift (vs fp64) is larger than the fixed tolerance, the
    # tolerance becomes DRIFT_FACTOR times that drift (reported as the effective tolerance).
    # The drift is measured per input: a bright, high-contrast scene can drive a random-weight
    # network's fp32 error up by 10x while a night shot stays at 1e-6.
    eff_rtol = max(rtol, DRIFT_FACTOR * drift.get("max_rel", 0.0))
    eff_box = max(box_tol_px, DRIFT_FACTOR * drift_nms.get("max_box_abs_px", 0.0))
    failures = []
    for (name, _), d in zip(inputs, onnx_vs_32, strict=True):
        if not np.isfinite(d["max_rel"]) or d["max_rel"] > d["tolerance"]:
            failures.append(f"raw outputs differ by {d['max_rel']:.3g} relative on {name} "
                            f"(tolerance {d['tolerance']:.3g})")
    if agreement:
        if agreement["unmatched_at_or_above_min_conf"]:
            failures.append(f"{agreement['unmatched_at_or_above_min_conf']} detections at or "
                            f"above conf {AGREEMENT_MIN_CONF} have no partner after NMS")
        if agreement["max_box_abs_px"] > eff_box:
            failures.append(f"matched boxes move by {agreement['max_box_abs_px']:.3g} px "
                            f"(tolerance {eff_box:.3g})")
    yolo = _merge_diffs(yolo_diffs)
    if yolo and yolo["max_abs"] != 0.0:
        failures.append(f"edgenet's yolov5 modules differ from the yolov5 package's by "
                        f"{yolo['max_abs']:.3g}")
    return {
        "passed": not failures,
        "failures": failures,
        "reference": "torch fp32: checkpoint['model'].float(), eval mode (as speciesnet runs it)",
        "tolerance": {
            "raw_max_rel": rtol,
            "raw_rel_definition": "max(box px difference / max(H, W) of the input, "
                                  "score difference) over all rows",
            "nms_unmatched_at_or_above_conf": AGREEMENT_MIN_CONF,
            "nms_box_max_abs_px": box_tol_px,
            "drift_factor": DRIFT_FACTOR,
            "effective_raw_max_rel": eff_rtol,
            "effective_nms_box_max_abs_px": eff_box,
            "why": "two fp32 implementations (torch, onnxruntime) differ by about as much as "
                   "fp32 differs from fp64 (torch32_vs_torch64, measured here). 1e-4 of the "
                   "input extent / of the score range leaves wide headroom over that for "
                   "well-conditioned models while any wrong op costs whole pixels; for a model "
                   "whose own fp32 drift is larger, the tolerance is drift_factor x that drift "
                   "(the effective_* values). Boxes are also compared after NMS (speciesnet "
                   "rounds them to whole pixels of the original image).",
        },
        "onnx_vs_torch32": onnx_diff,
        "torch32_vs_torch64": drift,
        "detections_onnx_vs_torch32": agreement,
        "detections_torch32_vs_torch64": drift_nms,
        "yolov5_package_vs_edgenet_modules": yolo or None,
        "inputs": per_input,
        "images": used_images,
        "seconds": round(time.time() - t0, 2),
    }


def convert_detector(src_pt: Path, dst_onnx: Path, *, opset: int = 17,
                     check_images: list[Path] | None = None, tolerance: float = DEFAULT_RTOL,
                     use_yolov5: bool = False, compare_with_yolov5: bool | None = None,
                     max_check_images: int = 3) -> dict[str, Any]:
    """Convert a MegaDetector v5 checkpoint to ONNX and prove it; returns the fidelity report.

    Input `images` (N, 3, H, W) float32 in [0, 1], N/H/W dynamic (H, W multiples of 64 as the
    letterbox produces); output `predictions` (N, rows, 5 + nc) as yolov5's `model(x)[0]`.
    `check_images` default to a few of ../shared/images (none: random tensors only). The file
    at `dst_onnx` is written only if the check passes (else ConvertError).
    `use_yolov5` loads with the yolov5 package's classes; `compare_with_yolov5` (default: when
    the package is importable) also checks our modules against the package's.
    """
    from converters.yolo_modules import _yolov5_available, load_checkpoint

    src_pt, dst_onnx = Path(src_pt), Path(dst_onnx)
    load_info: dict[str, Any] = {}
    model = load_checkpoint(src_pt, use_yolov5=use_yolov5, info=load_info)
    yolo_model = None
    if compare_with_yolov5 is None:
        compare_with_yolov5 = _yolov5_available() and not use_yolov5
    if compare_with_yolov5:
        yolo_model = load_checkpoint(src_pt, use_yolov5=True)
    det = model.model[-1]
    nc = int(det.nc)
    if check_images is None:
        check_images = default_check_images(max_check_images)
    dst_onnx.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst_onnx.with_name(f".{dst_onnx.name}.{os.getpid()}.tmp")
    try:
        t0 = time.time()
        try:
            export_onnx(model, tmp, opset)
        except Exception as err:  # noqa: BLE001 - exporter failures are reported, not traced
            raise ConvertError(
                f"ONNX export failed ({type(err).__name__}: {err})", path=src_pt,
                fix="report this with the checkpoint's origin; try another --opset") from err
        export_s = time.time() - t0
        versions = _versions()
        if load_info.get("classes") == "yolov5" or yolo_model is not None:
            try:
                from importlib.metadata import version

                versions["yolov5"] = version("yolov5")
            except Exception:  # noqa: BLE001
                versions["yolov5"] = "unknown"
        meta = {
            "edgenet.kind": "detector",
            "edgenet.architecture": "yolov5",
            "edgenet.source_file": src_pt.name,
            "edgenet.source_sha256": _sha256(src_pt),
            "edgenet.source_stored_dtypes": ",".join(load_info.get("stored_dtypes", [])),
            "edgenet.converter_versions": json.dumps(versions, sort_keys=True),
            "edgenet.precision": "fp32",
            "edgenet.opset": str(opset),
            "edgenet.num_classes": str(nc),
            "edgenet.strides": ",".join(str(int(s)) for s in det.stride.tolist()),
            "edgenet.input": "images: N x 3 x H x W float32 RGB in [0,1], yolov5 letterbox",
            "edgenet.output": "predictions: N x rows x (5+nc): cx, cy, w, h (px), obj, classes",
        }
        stamp_onnx_file(tmp, meta, doc_string=_DOC_STRING)
        report = verify(model, tmp, check_images=check_images, rtol=tolerance,
                        yolov5_model=yolo_model)
        report.update({
            "source_file": src_pt.name,
            "source_sha256": meta["edgenet.source_sha256"],
            "source": load_info,
            "precision": "fp32",
            "opset": opset,
            "exporter": "torch.onnx.export(dynamo=False) (TorchScript tracer)",
            "converter_versions": versions,
            "export_seconds": round(export_s, 2),
            "num_classes": nc,
        })
        if not report["passed"]:
            raise ConvertError(
                "the ONNX graph does not reproduce the checkpoint: " + "; ".join(
                    report["failures"]), path=src_pt,
                fix="nothing was written; check the torch/onnxruntime versions and report it")
        os.replace(tmp, dst_onnx)
        report["onnx_file"] = dst_onnx.name
        report["onnx_sha256"] = _sha256(dst_onnx)
        return report
    finally:
        if tmp.exists():
            tmp.unlink()


__all__ = ["ConvertError", "compare_detections", "convert_detector", "export_onnx",
           "letterbox_rgb", "raw_diff", "to_nchw", "torch_nms", "verify", "yolov5_nms"]
