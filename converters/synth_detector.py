"""Synthetic MegaDetector v5 checkpoints: YOLOv5x6 layout, random weights that behave.

Why: tests, benchmarks and the comparison with speciesnet need a detector in MegaDetector's
real file format without shipping or downloading the real weights. A plainly random network is
useless for that: BatchNorm left at mean 0 / variance 1 lets activations explode or vanish
through ~100 layers, fp32 and fp64 runs then disagree by whole pixels, and the head outputs
either nothing or thousands of boxes. So the random network is *conditioned* on real
camera-trap images:

1. BatchNorm scales are small (gamma 0.1-0.25, residual branches 0.03-0.1). Measured here:
   with BatchNorm subtracting the mean, a conv+BN+SiLU layer at gamma ~0.7 amplifies
   perturbations by ~1.2x (mean-field gain (1+q)/(1+q/2), q = gamma^2), so rounding errors
   grow ~1000x through YOLOv5x6's neck and fp32 differs from fp64 by ~1 px and ~1e-3 in
   scores; at gamma ~0.2 SiLU works near its linear range, the gain is ~1 and the full
   model's fp32-vs-fp64 drift is ~1e-6 relative.
2. BatchNorm statistics are recalibrated on real images at the real input scale, layer by
   layer in one pass: every BatchNorm runs in training mode with cumulative averaging
   (momentum None) over one batch, so each layer normalises with, and stores, the statistics
   of exactly the activations it sees given the already-normalised layers before it.
3. The weights are rounded to fp16 (MegaDetector's release files are fp16; the fidelity
   reference is then `checkpoint["model"].float()`, exactly what speciesnet runs).
4. Each Detect output channel is rescaled and biased on the features of that same pass: box
   offsets get bounded logits, objectness a spread whose offset is searched so the
   calibration images get about `target_boxes` boxes at conf >= 0.1 after yolov5 NMS
   (balanced in log ratio over images), class scores favour animal > person > vehicle.
   Known limit: random features scale with image contrast, so bright day shots get more
   boxes than dark infrared ones (some of which get none).

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
_OBJ_MAX = 8.0  # objectness logits: largest deviation; offset set by a search
_CLS = [(3.0, 2.0), (3.0, -1.0), (3.0, -2.5)]  # animal, person, vehicle
# BatchNorm affine parameters (see point 1 of the module docstring: small gammas keep the
# random network out of the chaotic regime, so fp32 stays close to fp64).
_BN_GAMMA = (0.1, 0.25)
_BN_BETA = 0.05
_RESIDUAL_GAMMA = (0.03, 0.1)
# BatchNorm variance floor, as a fraction of the layer's median variance (see _calibrate_batchnorm).
_VAR_FLOOR = 0.1


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


def _canvas_batch(arrays: Sequence[np.ndarray], canvas: tuple[int, int]) -> np.ndarray:
    """Letterbox every image onto an (H, W) canvas (scale to fit, pad 114) -> NCHW float32.

    Same scale and interpolation as yolov5's letterbox at 1280 for 4:3 images (which fill a
    960 x 1280 canvas exactly), so the statistics are those the model sees at inference.
    """
    import cv2

    ch, cw = canvas
    out = []
    for rgb in arrays:
        h, w = rgb.shape[:2]
        r = min(ch / h, cw / w)
        nw, nh = max(1, int(round(w * r))), max(1, int(round(h * r)))
        im = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
        top, left = (ch - nh) // 2, (cw - nw) // 2
        im = cv2.copyMakeBorder(im, top, ch - nh - top, left, cw - nw - left,
                                cv2.BORDER_CONSTANT, value=(114, 114, 114))
        out.append(im)
    return (np.stack(out).transpose(0, 3, 1, 2) / 255).astype(np.float32)


def _calibrate_batchnorm(model: Any, batch: np.ndarray) -> list[list[Any]]:
    """Set every BatchNorm's running stats from its own inputs on BATCH, in one eval pass.

    Each BatchNorm is calibrated by a forward pre-hook at the moment its input arrives, and
    (still in eval mode) immediately normalises with the statistics it was just given, so every
    later layer is calibrated on exactly the features the finished model computes. Variances are
    floored at `_VAR_FLOOR` x the layer's median: a near-constant channel (a SiLU that is almost
    always off) would otherwise get a gain of 1/sqrt(tiny var), which multiplies the fp32
    rounding of everything upstream (measured: 1e-2 relative fp32-vs-fp64 drift on the full
    model without the floor). Trained networks do not have such channels in the signal path.

    Returns the feature maps that entered Detect in that pass, one list per image.
    """
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]

    def calibrate(bn: Any, args: tuple[Any, ...]) -> None:
        x = args[0].detach().double()
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        floor = _VAR_FLOOR * float(var.median()) + 1e-6
        bn.running_mean.copy_(mean.float())
        bn.running_var.copy_(var.clamp_min(floor).float())

    handles = [bn.register_forward_pre_hook(calibrate) for bn in bns]
    det = model.model[-1]
    captured: list[Any] = []
    handles.append(det.register_forward_pre_hook(
        lambda _m, args: captured.extend(t.detach().clone() for t in args[0])))
    model.eval()
    try:
        with torch.no_grad():
            model(torch.from_numpy(batch))
    finally:
        for handle in handles:
            handle.remove()
    return [[t[b:b + 1] for t in captured] for b in range(batch.shape[0])]


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


def _count_raw(raw: np.ndarray, thr: float, cap: int = 1000) -> list[int]:
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
    """Rescale/bias Detect's 1x1 convs on real features; search the objectness offset.

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
                    # By the largest deviation, like the other outputs: the features are
                    # heavy-tailed (tens of standard deviations at a few positions), and std
                    # scaling left objectness logits of +-100 whose sigmoid tail turns fp32
                    # rounding into visible conf differences. Bounded logits, then an offset
                    # search, give a handful of boxes from the most salient positions.
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

        def counts(offset: float) -> list[int]:
            out: list[int] = []
            for raw, lg in zip(decoded, logits, strict=True):
                raw = raw.copy()
                raw[..., 4] = 1 / (1 + np.exp(-np.clip(lg + offset, -80, 80)))
                out += _count_raw(raw, 0.1)
            return out

        def miss(offset: float) -> float:
            # Balanced over images (log ratio to the target, never a mean count): random
            # features scale with image contrast, and a mean would let the highest-contrast
            # image take hundreds of boxes while night shots get none.
            c = np.asarray(counts(offset), np.float64)
            return float(np.mean(np.abs(np.log((1 + c) / (1 + target_boxes)))))

        grid = np.arange(-40.0, 10.0, 0.5)
        scores = [miss(o) for o in grid]
        best = float(grid[int(np.argmin(scores))])
        fine = np.arange(best - 1.0, best + 1.0, 0.125)
        offset = float(fine[int(np.argmin([miss(o) for o in fine]))])
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
                                 target_boxes: float = 4.0, calib_count: int | None = None,
                                 canvas: tuple[int, int] = (960, 1280), drift_check: bool = True,
                                 drift_crop: int | None = None) -> dict[str, Any]:
    """Write a MegaDetector-format checkpoint with conditioned random weights; return info.

    size "full" is YOLOv5x6 (depth 1.33, width 1.25, P3-P6, strides 8/16/32/64, 3 classes,
    ~140M parameters); "tiny" shrinks depth/width but keeps every layer type. `calib_images`
    are real camera-trap images (generated scenes are used when none decode); `calib_count` of
    them (default 2 full, 4 tiny), letterboxed onto a `canvas` (H, W) at the real input scale
    (BatchNorm statistics taken at a reduced resolution do not hold at 1280: the P6 maps and
    SPPF pooling see different structures), serve both the BatchNorm statistics and the head.
    `half` stores fp16 like MegaDetector's release files. The info dict reports parameters,
    box counts per calibration image and the fp32-vs-fp64 drift of the stored model as
    speciesnet runs it (`.float()`), measured on the first image letterboxed at 1280 (or a
    `drift_crop` square crop of it: faster, but a crop can miss the worst region).
    """
    import torch

    from converters.detector import letterbox_rgb, to_nchw
    from converters.yolo_modules import DetectionModel, save_checkpoint, yolov5_p6_cfg

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    t0 = time.time()
    full = size == "full"
    calib_count = calib_count or (6 if full else 4)
    drift_crop = drift_crop or 0
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
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * _BN_BETA)
        # Residual branches smaller still: each unit-gain branch would double the variance of
        # the rounding errors that pass through its Bottleneck.
        for m in model.modules():
            if type(m).__name__ == "Bottleneck" and m.add:
                bn = m.cv2.bn
                bn.weight.copy_(torch.empty_like(bn.weight).uniform_(*_RESIDUAL_GAMMA,
                                                                     generator=gen))

    arrays, used = _calibration_arrays(list(calib_images), calib_count, seed)
    t_bn = time.time()
    features = _calibrate_batchnorm(model, _canvas_batch(arrays, canvas))
    bn_s = time.time() - t_bn
    if half:
        model.half().float()

    t_head = time.time()
    head_info = _condition_head(model, features, target_boxes)
    if half:
        model.half().float()
    head_s = time.time() - t_head

    det = model.model[-1]
    counts_01 = _count_boxes(det, features, 0.1)
    counts_001 = _count_boxes(det, features, 0.01)
    drift = None
    if drift_check:  # fp64 costs ~2x fp32 (~1.5 min for the full model on 2 cores)
        x = to_nchw(letterbox_rgb(arrays[0]))
        if drift_crop:
            h, w = x.shape[2:]
            top, left = max(0, (h - drift_crop) // 2) // 64 * 64, max(0, (w - drift_crop) // 2)
            x = np.ascontiguousarray(x[:, :, top:top + drift_crop, left:left + drift_crop])
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
        "calibration": {"images": len(arrays), "canvas": list(canvas),
                        "bn_seconds": round(bn_s, 2)},
        "head": {**head_info, "target_boxes_at_0.1": target_boxes,
                 "seconds": round(head_s, 2)},
        "boxes_per_image_at_0.1": counts_01,
        "boxes_per_image_at_0.01": counts_001,
        "fp32_vs_fp64": drift,
        "seconds": round(time.time() - t0, 2),
    }


__all__ = ["build_synthetic_megadetector", "SIZES", "NAMES"]
