"""Synthetic MegaDetector v5 checkpoints: YOLOv5x6 layout, random weights that behave.

Why: tests, benchmarks and the comparison with speciesnet need a detector in MegaDetector's
real file format without shipping or downloading the real weights. A plainly random network is
useless for that: BatchNorm left at mean 0 / variance 1 lets activations explode or vanish
through ~100 layers, fp32 and fp64 runs then disagree by whole pixels, and the head outputs
either nothing or thousands of boxes. So the random network is *conditioned* on real
camera-trap images:

1. BatchNorm statistics are recalibrated on real images, layer by layer in one pass: every
   BatchNorm runs in training mode with cumulative averaging (momentum None) over one batch,
   so each layer normalises with, and stores, the statistics of exactly the activations it
   sees given the already-normalised layers before it. Activations keep unit-ish scale.
2. The weights are rounded to fp16 (MegaDetector's release files are fp16; the fidelity
   reference is then `checkpoint["model"].float()`, exactly what speciesnet runs).
3. Each Detect output channel is rescaled and biased on features of real letterboxed images
   at the real input size: box offsets get logits of unit scale, objectness a wide spread
   whose offset is found by bisection so the images give a handful of boxes at conf >= 0.1
   after yolov5 NMS, and class scores favour "animal" over "person" over "vehicle".

The checkpoint is a `torch.save` dict like MegaDetector's (`model` in fp16, epoch -1,
optimizer None, ...) whose pickled classes are `models.yolo.DetectionModel`,
`models.common.Conv`, ... so yolov5's own classes unpickle it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

# (depth_multiple, width_multiple): full = YOLOv5x6 (MegaDetector v5a/v5b, ~140M params);
# tiny keeps every layer type (Conv, C3 with Bottlenecks, SPPF, Upsample, Concat, 4-level
# Detect) with 1-3 bottlenecks per C3 and 8-64 channels.
SIZES = {"full": (1.33, 1.25), "tiny": (0.33, 0.0625)}
NAMES = ["animal", "person", "vehicle"]
# Targets for the head's pre-activations, as (largest deviation from the mean over the
# calibration positions, mean). Scaling by the largest deviation rather than the standard
# deviation matters: random features have very heavy tails (text strips, saturated flashes),
# and std scaling sends those positions to logits of +-40: zero-width boxes, saturated scores
# and fp32 errors amplified far beyond what a trained model shows.
_XY = (3.0, 0.0)
_WH = (2.0, 0.0)  # box sides within [0.03, 3.6] x anchor on the calibration images
_OBJ_MAX = 12.0  # mean set by bisection on the number of boxes
_CLS = [(3.0, 2.0), (3.0, -1.0), (3.0, -2.5)]  # animal, person, vehicle
_BN_GAMMA = (0.5, 0.9)
_RESIDUAL_GAMMA = (0.1, 0.3)


def _calibration_arrays(calib_images: Sequence[Path], limit: int, seed: int
                        ) -> tuple[list[np.ndarray], list[str]]:
    """Decoded RGB arrays of up to LIMIT images; generated scenes when none decode."""
    from converters.detector import load_rgb

    arrays, names = [], []
    paths = list(calib_images)
    if len(paths) > limit:  # spread the picks over the list (folders list similar files together)
        step = len(paths) / limit
        picks = [paths[int(i * step)] for i in range(limit)]
        paths = picks + [p for p in paths if p not in picks]
    for p in paths:
        if len(arrays) >= limit:
            break
        rgb = load_rgb(Path(p))
        if rgb is not None and rgb.ndim == 3 and min(rgb.shape[:2]) >= 32:
            arrays.append(rgb)
            names.append(Path(p).name)
    if not arrays:
        arrays = _generated_scenes(limit, seed)
        names = [f"generated_{i}" for i in range(len(arrays))]
    return arrays, names


def _generated_scenes(count: int, seed: int, size: tuple[int, int] = (720, 960)
                      ) -> list[np.ndarray]:
    """Smooth random scenes with a few blobs: a crude stand-in for photos (no real images)."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = size
    out = []
    for _ in range(count):
        small = rng.uniform(0, 255, size=(h // 48 + 1, w // 48 + 1, 3)).astype(np.float32)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        for _ in range(int(rng.integers(2, 6))):
            center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(20, w // 4)), int(rng.integers(20, h // 4)))
            color = tuple(float(c) for c in rng.uniform(0, 255, 3))
            cv2.ellipse(img, center, axes, float(rng.uniform(0, 180)), 0, 360, color, -1)
        img += rng.normal(0, 6, size=img.shape).astype(np.float32)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def _square_batch(arrays: Sequence[np.ndarray], size: int) -> np.ndarray:
    """Letterbox every image into a SIZE x SIZE square (pad 114) -> (N, 3, S, S) float32."""
    import cv2

    out = []
    for rgb in arrays:
        h, w = rgb.shape[:2]
        r = size / max(h, w)
        nw, nh = max(1, int(round(w * r))), max(1, int(round(h * r)))
        im = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
        top, left = (size - nh) // 2, (size - nw) // 2
        im = cv2.copyMakeBorder(im, top, size - nh - top, left, size - nw - left,
                                cv2.BORDER_CONSTANT, value=(114, 114, 114))
        out.append(im)
    return (np.stack(out).transpose(0, 3, 1, 2) / 255).astype(np.float32)


def _calibrate_batchnorm(model: Any, batch: np.ndarray) -> None:
    """Set every BatchNorm's running stats to those of its own inputs on BATCH (one pass)."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one batch -> exactly its statistics
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(batch))
    for bn in bns:
        bn.momentum = 0.03
    model.eval()


def _head_inputs(model: Any, inputs: Sequence[np.ndarray]) -> list[list[Any]]:
    """The feature maps entering Detect for each input (captured by a pre-hook)."""
    import torch

    det = model.model[-1]
    captured: list[list[Any]] = []

    def hook(_module: Any, args: tuple[Any, ...]) -> None:
        captured.append([t.detach().clone() for t in args[0]])

    handle = det.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for x in inputs:
                model(torch.from_numpy(x))
    finally:
        handle.remove()
    return captured


def _decode(det: Any, feats: list[Any]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return det(list(feats))[0].numpy()


def _obj_logits(det: Any, feats: list[Any]) -> np.ndarray:
    """Objectness logits (N, rows) in the decoded output's row order (level, anchor, y, x)."""
    import torch

    out = []
    with torch.no_grad():
        for i, conv in enumerate(det.m):
            p = conv(feats[i])
            bs, _, ny, nx = p.shape
            p = p.view(bs, det.na, det.no, ny, nx).permute(0, 1, 3, 4, 2)[..., 4]
            out.append(p.reshape(bs, -1).double())
    return torch.cat(out, 1).numpy()


def _count_raw(raw: np.ndarray, thr: float, cap: int = 3000) -> list[int]:
    """Detections at or above THR after yolov5 NMS per image (CAP when candidates exceed it)."""
    from converters.detector import torch_nms

    counts = []
    for b in range(raw.shape[0]):
        pre = raw[b, :, 4] * raw[b, :, 5:].max(1)
        if int((pre >= thr).sum()) > cap:
            counts.append(cap)
            continue
        counts.append(int((torch_nms(raw[b].astype(np.float32))[:, 4] >= thr).sum()))
    return counts


def _count_boxes(det: Any, features: list[list[Any]], thr: float) -> list[int]:
    counts: list[int] = []
    for feats in features:
        counts += _count_raw(_decode(det, feats), thr)
    return counts


def _condition_head(model: Any, features: list[list[Any]], target_boxes: float) -> dict:
    """Rescale/bias Detect's 1x1 convs on real features; bisect the objectness offset.

    Random features scale with image contrast (a sunny savanna gives several times the
    activations of an infrared night shot), so no single objectness offset gives every image
    the same number of boxes: the offset is chosen for the median calibration image.
    """
    import torch

    det = model.model[-1]
    no, na = det.no, det.na
    with torch.no_grad():
        for i, conv in enumerate(det.m):
            f = torch.cat([feats[i].permute(1, 0, 2, 3).reshape(feats[i].shape[1], -1)
                           for feats in features], 1).double()  # (C_in, positions)
            w = conv.weight.double().view(conv.out_channels, -1)
            pre = w @ f  # (C_out, positions), bias excluded
            mean = pre.mean(1)
            spread = (pre - mean[:, None]).abs().amax(1)
            # A channel with (nearly) constant input would need a huge gain, which would also
            # amplify fp32 rounding: floor its spread at a quarter of the level's median.
            spread = spread.clamp_min(0.25 * float(spread.median()) + 1e-12)
            for c in range(conv.out_channels):
                k = c % no
                if k < 2:
                    t_max, t_mean = _XY
                elif k < 4:
                    t_max, t_mean = _WH
                elif k == 4:
                    t_max, t_mean = _OBJ_MAX, 0.0
                else:
                    t_max, t_mean = _CLS[(k - 5) % len(_CLS)]
                scale = t_max / float(spread[c])
                conv.weight[c] *= scale
                conv.bias[c] = t_mean - float(mean[c]) * scale
        obj_idx = [a * no + 4 for a in range(na)]
        base = [conv.bias[obj_idx].clone() for conv in det.m]
        # Decode once; an objectness offset only changes column 4 = sigmoid(logit + offset).
        decoded = [_decode(det, feats) for feats in features]
        logits = [_obj_logits(det, feats) for feats in features]

        def count(offset: float) -> float:
            # The median image, not the mean: a mean would let the highest-contrast image
            # take all the boxes.
            counts = []
            for raw, lg in zip(decoded, logits, strict=True):
                raw = raw.copy()
                raw[..., 4] = 1 / (1 + np.exp(-np.clip(lg + offset, -80, 80)))
                counts += _count_raw(raw, 0.1)
            return float(np.median(counts))

        lo, hi = -60.0, 20.0  # count(lo) ~ 0, count(hi) large
        for _ in range(24):
            mid = (lo + hi) / 2
            if count(mid) > target_boxes:
                hi = mid
            else:
                lo = mid
        offset = hi if abs(count(hi) - target_boxes) <= abs(count(lo) - target_boxes) else lo
        for conv, b in zip(det.m, base, strict=True):
            conv.bias[obj_idx] = b + offset
    return {"objectness_offset": round(offset, 4)}


def _drift(model: Any, x: np.ndarray) -> dict[str, Any]:
    """fp32 vs fp64 of the same (fp16-rounded) weights: raw outputs and boxes after NMS."""
    import torch

    from converters.detector import compare_detections, raw_diff, yolov5_nms

    m64 = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        r32 = model(torch.from_numpy(x))[0].numpy()
        r64 = m64(torch.from_numpy(x).double())[0].numpy()
    d = raw_diff(r64, r32, float(max(x.shape[2:])))
    agree = compare_detections(yolov5_nms(r64[0]), yolov5_nms(r32[0]))
    return {"input_shape": list(x.shape), "raw": d, "detections": agree}


def _fresh_grids(model: Any) -> None:
    import torch

    det = model.model[-1]
    det.grid = [torch.empty(0) for _ in range(det.nl)]
    det.anchor_grid = [torch.empty(0) for _ in range(det.nl)]
    if "dynamic" in det.__dict__:
        del det.__dict__["dynamic"]


def build_synthetic_megadetector(dst_pt: Path, size: str = "tiny",
                                 calib_images: Sequence[Path] = (), seed: int = 0, *,
                                 half: bool = True, model_class_name: str = "DetectionModel",
                                 target_boxes: float = 4.0, bn_images: int | None = None,
                                 bn_size: int | None = None, head_images: int | None = None,
                                 drift_check: bool = True, drift_size: int | None = None
                                 ) -> dict[str, Any]:
    """Write a MegaDetector-format checkpoint with conditioned random weights; return info.

    size "full" is YOLOv5x6 (depth 1.33, width 1.25, P3-P6, strides 8/16/32/64, 3 classes,
    ~140M parameters); "tiny" shrinks depth/width but keeps every layer type. `calib_images`
    are real camera-trap images (generated scenes are used when none decode). BatchNorm
    statistics use `bn_images` images letterboxed to `bn_size` squares; the head is tuned on
    `head_images` images letterboxed as speciesnet does (1280, stride 64); the fp32-vs-fp64 drift
    is measured on the first image letterboxed to `drift_size`. `half` stores fp16
    like MegaDetector's release files. The info dict reports parameters, per-image box counts
    and the fp32-vs-fp64 drift of the stored model as speciesnet runs it (`.float()`).
    """
    import torch

    from converters.detector import letterbox_rgb, to_nchw
    from converters.yolo_modules import DetectionModel, save_checkpoint, yolov5_p6_cfg

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    t0 = time.time()
    full = size == "full"
    bn_images = bn_images or (4 if full else 6)
    bn_size = bn_size or (320 if full else 640)
    head_images = head_images or (2 if full else 4)
    drift_size = drift_size or (640 if full else 1280)
    torch.manual_seed(seed)
    gd, gw = SIZES[size]
    model = DetectionModel(yolov5_p6_cfg(gd, gw, nc=len(NAMES)))
    model.names = list(NAMES)
    model.nc = len(NAMES)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # trained-looking BN affine parameters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.empty_like(m.weight).uniform_(*_BN_GAMMA, generator=gen))
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        # Residual branches start small, as in trained CSP nets: with unit-gain branches every
        # Bottleneck doubles the variance of rounding errors and fp32 drifts ~50x further
        # from fp64 over the network than with damped branches.
        for m in model.modules():
            if type(m).__name__ == "Bottleneck" and m.add:
                bn = m.cv2.bn
                bn.weight.copy_(torch.empty_like(bn.weight).uniform_(*_RESIDUAL_GAMMA,
                                                                     generator=gen))

    arrays, used = _calibration_arrays(list(calib_images), max(bn_images, head_images), seed)
    t_bn = time.time()
    _calibrate_batchnorm(model, _square_batch(arrays[:bn_images], bn_size))
    bn_s = time.time() - t_bn
    if half:
        model.half().float()

    t_head = time.time()
    head_inputs = [to_nchw(letterbox_rgb(a)) for a in arrays[:head_images]]
    features = _head_inputs(model, head_inputs)
    head_info = _condition_head(model, features, target_boxes)
    if half:
        model.half().float()
    head_s = time.time() - t_head

    det = model.model[-1]
    counts_01 = _count_boxes(det, features, 0.1)
    counts_001 = _count_boxes(det, features, 0.01)
    drift = None
    if drift_check:  # fp64 costs ~2x fp32: the full model is checked on a 640 letterbox
        x = head_inputs[0] if drift_size == 1280 else to_nchw(letterbox_rgb(arrays[0],
                                                                            drift_size))
        drift = _drift(model, x)

    _fresh_grids(model)
    if half:
        model.half()
    for p in model.parameters():
        p.requires_grad = False
    model.eval()
    ckpt = {
        "epoch": -1,
        "best_fitness": None,
        "model": model,
        "ema": None,
        "updates": None,
        "optimizer": None,
        "wandb_id": None,
        "date": datetime.now(timezone.utc).isoformat(),
        "edgenet_synthetic": {"size": size, "seed": seed,
                              "note": "random weights conditioned on images; not a detector"},
    }
    dst_pt = Path(dst_pt)
    dst_pt.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst_pt.with_name(f".{dst_pt.name}.tmp")
    save_checkpoint(ckpt, tmp, model_class_name=model_class_name)
    tmp.replace(dst_pt)
    return {
        "file": dst_pt.name,
        "size": size,
        "layout": "YOLOv5x6 (P3-P6, strides 8/16/32/64)",
        "depth_multiple": gd,
        "width_multiple": gw,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "num_classes": len(NAMES),
        "names": list(NAMES),
        "stored_dtype": "float16" if half else "float32",
        "pickled_model_class": f"models.yolo.{model_class_name}",
        "seed": seed,
        "calibration_images": used,
        "bn_calibration": {"images": min(bn_images, len(arrays)), "size": bn_size,
                           "seconds": round(bn_s, 2)},
        "head": {**head_info, "images": len(features), "target_boxes_at_0.1": target_boxes,
                 "seconds": round(head_s, 2)},
        "boxes_per_image_at_0.1": counts_01,
        "boxes_per_image_at_0.01": counts_001,
        "fp32_vs_fp64": drift,
        "seconds": round(time.time() - t0, 2),
    }


__all__ = ["build_synthetic_megadetector", "SIZES", "NAMES"]
