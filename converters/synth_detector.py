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
   at the real input size (every calibration image, letterboxed as speciesnet does):
   box regression is nearly constant (per-anchor shapes; see _BOX_DEV for why), objectness is
   a sparse sum of heavy-tailed channels (see _peaky_direction) on the P5/P6 levels only
   (see _OFF_LEVELS) whose offset is found by bisection so the median image gets a handful of
   boxes at conf >= 0.1 after yolov5 NMS, and class scores favour "animal" over "person"
   over "vehicle".

The checkpoint is a `torch.save` dict like MegaDetector's (`model` in fp16, epoch -1,
optimizer None, ...) whose pickled classes are `models.yolo.DetectionModel`,
`models.common.Conv`, ... so yolov5's own classes unpickle it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Sequence
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
# Box regression (xy, wh logits): a random per-anchor offset plus an image-dependent part of
# at most _BOX_DEV. Why so small: speciesnet rounds boxes to whole pixels and cuts classifier
# crops at those integers, so a box coordinate that two fp32 implementations compute 0.01 px
# apart lands on a different integer about 1% of the time, and a 1 px crop shift moves a
# random classifier's scores by more than 1e-3. The wh slope is up to 1x the anchor (925 px
# at P6) per logit unit, and fp32 features carry ~1e-4 relative error after ~100 layers, so
# a 1-logit regression range would put boxes ~0.1 px apart. A trained MegaDetector is better
# conditioned than random weights; here boxes take per-anchor shapes (0.5-1.9 x anchor) at the
# cells the image's objectness selects, and the image still decides where and how many.
_BOX_DEV = 0.002
_XY_OFFSET = (-0.6, 0.6)  # per-anchor random logit offsets: centres within the cell
_WH_OFFSET = (-0.7, 0.7)  # sides 0.44-1.9 x anchor
_OBJ_MAX = 16.0  # largest deviation of the objectness logit; its offset set by bisection
# Levels whose objectness is switched off (P3, P4: strides 8 and 16). Why: random features
# scale with image contrast, so the number of positions above any fixed objectness threshold
# swings by orders of magnitude between a night IR shot and a sunny one. P5/P6 boxes are large
# (anchors 140-925 px), and yolov5's NMS (IoU 0.45) lets only a handful of large boxes survive
# on one image, whatever the contrast: the box count is bounded by geometry, not by tuning.
# Small boxes would also be the most sensitive to rounding (many near-tied neighbours).
_OFF_LEVELS = (0, 1)
_OFF_LOGIT = -30.0  # sigmoid(-30 + 8) < 3e-10: never reaches conf_thres 0.01
_CLS = [(3.0, 2.0), (3.0, -1.0), (3.0, -2.5)]  # animal, person, vehicle
_BN_GAMMA = (0.5, 0.9)
_RESIDUAL_GAMMA = (0.1, 0.3)
# BatchNorm gamma inside the neck's Bottlenecks (no shortcut: C3(..., False) in the head).
# Why: without a residual path their 8-conv chains per C3 are a plain deep random net, which is
# chaotic at gamma 0.5-0.9: measured on a bright scene at 640 (full size), each neck C3
# multiplied the fp32-vs-fp64 error 2-3x, to 8e-3 of the features' std at P6. Smaller gammas
# keep SiLU near its linear range, where errors pass through without growing.
_PLAIN_BOTTLENECK_GAMMA = (0.2, 0.4)
# ... and the last Bottleneck of such a chain outputs a small branch (C3 concatenates it with
# its cv2 path): the chain's accumulated error then reaches cv3 scaled down ~10x.
_PLAIN_CHAIN_OUT_GAMMA = (0.05, 0.1)


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


def _calibrate_batchnorm(model: Any, inputs: Iterable[np.ndarray]) -> int:
    """Set every BatchNorm's running stats from INPUTS, one image per training-mode pass.

    Momentum None makes the running stats the average over the passes. The images are
    letterboxed exactly as speciesnet feeds the detector (1280 on the long side), one at a
    time: statistics taken on small squares (320 px) leave real 1280 inputs so far out of
    range that deep features grew 100x on some images (std 30-130 instead of ~0.1) and fp32
    drifted from fp64 by 0.1-1 in the head's inputs; at 1280 the same images stay within
    ~10x and drift ~1e-4 (measured on held-out shared images, full size).
    """
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the passes
    model.train()
    n = 0
    with torch.no_grad():
        for x in inputs:
            model(torch.from_numpy(x))
            n += 1
    for bn in bns:
        bn.momentum = 0.03
    model.eval()
    return n


def _head_inputs(model: Any, inputs: Iterable[np.ndarray], levels: Sequence[int] | None = None
                 ) -> list[list[Any]]:
    """The feature maps entering Detect for each input (captured by a pre-hook).

    Only `levels` are kept (None: all); the others are None, to spare memory (the full
    model's P3 map of one 1280 image is 25 MB).
    """
    import torch

    det = model.model[-1]
    captured: list[list[Any]] = []

    def hook(_module: Any, args: tuple[Any, ...]) -> None:
        captured.append([t.detach().clone() if levels is None or i in levels else None
                         for i, t in enumerate(args[0])])

    handle = det.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for x in inputs:
                model(torch.from_numpy(x))
    finally:
        handle.remove()
    return captured


def _positions(feat: Any) -> np.ndarray:
    """(1, C, H, W) feature map -> (C, H*W) float64."""
    f = feat.double().numpy()
    return f[0].reshape(f.shape[1], -1)


def _decoded_rows(det: Any, feats: list[Any], levels: Sequence[int]) -> np.ndarray:
    """Detect's decoded rows (rows, 5 + nc) of one image for `levels` only (yolov5 decoding)."""
    import torch

    out = []
    with torch.no_grad():
        for i in levels:
            p = det.m[i](feats[i])
            bs, _, ny, nx = p.shape
            p = p.view(bs, det.na, det.no, ny, nx).permute(0, 1, 3, 4, 2).sigmoid()
            grid, anchor_grid = det._make_grid(nx, ny, i)
            xy = (p[..., :2] * 2 + grid) * det.stride[i]
            wh = (p[..., 2:4] * 2) ** 2 * anchor_grid
            out.append(torch.cat((xy, wh, p[..., 4:]), 4).reshape(-1, det.no).numpy())
    return np.concatenate(out)


def _count_raw(raw: np.ndarray, thr: float, cap: int = 3000) -> int:
    """Detections at or above THR after yolov5 NMS in one image's rows (CAP when more)."""
    from converters.detector import torch_nms

    pre = raw[:, 4] * raw[:, 5:].max(1)
    if int((pre >= min(thr, 0.01)).sum()) > cap:
        return cap
    return int((torch_nms(raw.astype(np.float32))[:, 4] >= thr).sum())


def _sparse_positive(f: np.ndarray, rng: np.random.Generator, m: int = 16) -> np.ndarray:
    """Weights (C_in,) on M random channels, positive, each channel scaled to unit spread.

    Why not the random dense row: a dense zero-mean row sums hundreds of features with mixed
    signs, so its output is a small difference of large terms and carries ~10x the features'
    relative rounding error; the converter's 1e-4 check failed on the class scores of the full
    model that way (1.7e-4). A positive sum of a few channels has no such cancellation.
    """
    pick = rng.choice(f.shape[0], size=min(m, f.shape[0]), replace=False)
    w = np.zeros(f.shape[0])
    w[pick] = rng.uniform(0.5, 1.0, len(pick)) / (np.abs(f[pick] - f[pick].mean(1, keepdims=True))
                                                   .max(1) + 1e-9)
    return w


def _scale_channels(conv: Any, f: np.ndarray, no: int, rng: np.random.Generator) -> None:
    """Set one level's 1x1 conv: box logits nearly constant, class logits spread."""
    import torch

    w = conv.weight.double().view(conv.out_channels, -1).numpy().copy()
    for c in range(conv.out_channels):
        if c % no >= 5:
            w[c] = _sparse_positive(f, rng)
    pre = w @ f  # (C_out, positions), bias excluded
    mean = pre.mean(1)
    spread = np.abs(pre - mean[:, None]).max(1)
    # A channel with (nearly) constant input would need a huge gain, which would also amplify
    # fp32 rounding: floor its spread at a quarter of the level's median.
    spread = np.maximum(spread, 0.25 * float(np.median(spread)) + 1e-12)
    scale, bias = np.ones(conv.out_channels), np.zeros(conv.out_channels)
    for c in range(conv.out_channels):
        k = c % no
        if k < 2:
            t_max, t_mean = _BOX_DEV, float(rng.uniform(*_XY_OFFSET))
        elif k < 4:
            t_max, t_mean = _BOX_DEV, float(rng.uniform(*_WH_OFFSET))
        elif k == 4:
            t_max, t_mean = _OBJ_MAX, 0.0
        else:
            t_max, t_mean = _CLS[(k - 5) % len(_CLS)]
        scale[c] = t_max / spread[c]
        bias[c] = t_mean - mean[c] * scale[c]
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(w * scale[:, None]).to(conv.weight.dtype)
                          .view_as(conv.weight))
        conv.bias.copy_(torch.from_numpy(bias).to(conv.bias.dtype))


def _peaky_direction(f: np.ndarray, anchor: int, rng: np.random.Generator, m: int = 16
                     ) -> np.ndarray:
    """Objectness weights: positive, on the M channels with the most outlying maxima.

    Why: a dense random direction gives a near-Gaussian logit, so the boxes above 0.01 are
    hundreds of near-ties around any threshold, and random features scale with image
    contrast, so a sunny scene gets hundreds of boxes and a night shot none. A sparse sum of
    heavy-tailed ("peaky") channels is low most of the time and high at a few salient spots:
    measured on the 47 shared images (full size), median 4-5 boxes at 0.1 and ~15-25 at 0.01,
    against 0-300 for a dense direction. All-positive weights also add no cancellation: the
    objectness logit carries ~0.5x the features' relative rounding error, where a fitted
    (ridge) direction measured 3-8x. Low-contrast (night, greyscale) images still often get no
    box: no fixed linear head on random features can undo contrast.
    """
    peak = (f.max(1) - np.median(f, 1)) / (f.std(1) + 1e-9)
    top = np.argsort(-peak)[anchor * m:(anchor + 1) * m]
    w = np.zeros(f.shape[0])
    w[top] = rng.uniform(0.5, 1.0, m) / (f[top].max(1) - f[top].mean(1) + 1e-9)
    return w


def _condition_head(model: Any, few: list[list[Any]], active: list[list[Any]],
                    target_boxes: float, seed: int = 0) -> dict:
    """Condition Detect's 1x1 convs on real features; fit and offset the objectness.

    `few`: all levels' features of a few images (box and class channels, switched-off levels);
    `active`: the active levels' features of every calibration image (objectness).
    """
    import torch

    det = model.model[-1]
    no, na = det.no, det.na
    on = [i for i in range(det.nl) if i not in _OFF_LEVELS or i == det.nl - 1]
    rng = np.random.default_rng(seed + 7)
    obj_idx = [a * no + 4 for a in range(na)]
    with torch.no_grad():
        for i, conv in enumerate(det.m):
            f = np.concatenate([_positions(feats[i]) for feats in few], 1)
            _scale_channels(conv, f, no, rng)
            if i not in on:
                conv.bias[obj_idx] += _OFF_LOGIT - _OBJ_MAX
                continue
            f_all = np.concatenate([_positions(feats[i]) for feats in active], 1)
            for a in range(na):
                w = _peaky_direction(f_all, a, rng)
                pre = w @ f_all
                scale = _OBJ_MAX / max(float(np.abs(pre - pre.mean()).max()), 1e-12)
                conv.weight[obj_idx[a]] = torch.from_numpy(w * scale).to(
                    conv.weight.dtype).view(-1, 1, 1)
                conv.bias[obj_idx[a]] = float(-pre.mean() * scale)
        base = [conv.bias[obj_idx].clone() for conv in det.m]
        # Decode once; an offset only changes column 4 = sigmoid(logit + offset).
        rows = [_decoded_rows(det, feats, on) for feats in active]
        logits = [np.log(r[:, 4].astype(np.float64)) - np.log1p(-r[:, 4].astype(np.float64))
                  for r in rows]

        def count(offset: float, thr: float = 0.1) -> list[int]:
            counts = []
            for r, lg in zip(rows, logits, strict=True):
                r = r.copy()
                r[:, 4] = 1 / (1 + np.exp(-np.clip(lg + offset, -80, 80)))
                counts.append(_count_raw(r, thr))
            return counts

        lo, hi = -60.0, 30.0  # median count(lo) ~ 0, count(hi) large
        for _ in range(20):
            mid = (lo + hi) / 2
            if np.median(count(mid)) > target_boxes:
                hi = mid
            else:
                lo = mid
        offset = lo
        for conv, b in zip(det.m, base, strict=True):
            conv.bias[obj_idx] = b + offset
    return {"objectness_offset": round(offset, 4), "active_levels": on,
            "boxes_per_image_at_0.1": count(offset), "boxes_per_image_at_0.01":
            count(offset, 0.01)}


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
    statistics use `bn_images` images letterboxed to `bn_size` (long side); the head is tuned on
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
    bn_images = bn_images or 16
    bn_size = bn_size or 1280
    head_images = head_images or (64 if full else 24)
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
            elif type(m).__name__ == "Bottleneck":
                for bn in (m.cv1.bn, m.cv2.bn):
                    bn.weight.copy_(torch.empty_like(bn.weight).uniform_(
                        *_PLAIN_BOTTLENECK_GAMMA, generator=gen))
        for m in model.modules():
            if type(m).__name__ == "C3" and not m.m[-1].add:
                bn = m.m[-1].cv2.bn
                bn.weight.copy_(torch.empty_like(bn.weight).uniform_(*_PLAIN_CHAIN_OUT_GAMMA,
                                                                     generator=gen))

    arrays, used = _calibration_arrays(list(calib_images), max(bn_images, head_images), seed)
    t_bn = time.time()
    # Spread over the list: folders list similar images (all the night shots) together.
    bn_picks = sorted({int(i) for i in np.linspace(0, len(arrays) - 1, min(bn_images,
                                                                          len(arrays)))})
    _calibrate_batchnorm(model, (to_nchw(letterbox_rgb(arrays[i], bn_size)) for i in bn_picks))
    bn_s = time.time() - t_bn
    if half:
        model.half().float()

    t_head = time.time()
    n_few = min(4, len(arrays))
    det = model.model[-1]
    on = [i for i in range(det.nl) if i not in _OFF_LEVELS or i == det.nl - 1]
    few = _head_inputs(model, [to_nchw(letterbox_rgb(a)) for a in arrays[:n_few]])
    active = [[f if i in on else None for i, f in enumerate(feats)] for feats in few]
    active += _head_inputs(model, (to_nchw(letterbox_rgb(a)) for a in arrays[n_few:head_images]),
                           levels=on)
    head_info = _condition_head(model, few, active, target_boxes, seed)
    if half:
        model.half().float()
    head_s = time.time() - t_head
    # Counted again on the stored (fp16-rounded) head.
    rows = [_decoded_rows(det, feats, on) for feats in active]
    counts_01 = [_count_raw(r, 0.1) for r in rows]
    counts_001 = [_count_raw(r, 0.01) for r in rows]
    del few, active, rows
    drift = None
    if drift_check:  # fp64 costs ~2x fp32: the full model is checked on a 640 letterbox
        drift = _drift(model, to_nchw(letterbox_rgb(arrays[0], drift_size)))

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
        "bn_calibration": {"images": len(bn_picks), "long_side": bn_size,
                           "seconds": round(bn_s, 2)},
        "head": {"objectness_offset": head_info["objectness_offset"],
                 "active_levels": head_info["active_levels"], "images": min(head_images,
                                                                            len(arrays)),
                 "target_median_boxes_at_0.1": target_boxes, "seconds": round(head_s, 2)},
        "boxes_per_image_at_0.1": counts_01,
        "boxes_at_0.1_summary": {"median": float(np.median(counts_01)),
                                 "zero": sum(c == 0 for c in counts_01),
                                 "max": max(counts_01)},
        "boxes_per_image_at_0.01": counts_001,
        "fp32_vs_fp64": drift,
        "seconds": round(time.time() - t0, 2),
    }


__all__ = ["build_synthetic_megadetector", "SIZES", "NAMES"]
