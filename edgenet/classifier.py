"""Classifier stage: crops bit-identical to speciesnet 5.0.6, the ONNX classifier, softmax/top-k.

Crops (speciesnet `SpeciesNetClassifier.preprocess`) are reproduced in numpy, bit for bit:

1. `F.pil_to_tensor` + `F.convert_image_dtype(float32)`: every pixel becomes float32(v) / 255
   (a true float32 division; we use a 256-entry lookup table, applied after the crop since it is
   elementwise).
2. `F.crop(top=int(ymin*H), left=int(xmin*W), height=int(h*H), width=int(w*W))`: Python `int()`
   truncation of the float64 products, Python/torch slicing semantics (negative ends wrap!) and
   zero padding where the box leaves the image, exactly as torchvision's tensor crop.
3. `F.resize([480, 480], antialias=False)`: PyTorch's CPU `upsample_bilinear2d`
   (align_corners=False) on float32. For a 3-channel NCHW float input PyTorch (2.x) uses its
   generic separable kernel when more than one intra-op thread is configured: per axis a
   source index `fma(scale, dst + 0.5, -0.5)` (scale = float32(in)/out) clamped at 0, index
   `floor`, `lambda = src - index`, weights `(1 - lambda, lambda)`; then the width pass
   `fma(x0, w0, x1 * w1)` and the height pass `fma(t0, wy0, t1 * wy1)`, all in float32. The
   fused multiply-adds are what GCC emits for PyTorch's AVX2/AVX512 x86-64 build; we emulate
   a correctly rounded fma32 in float64 with an exact-tie correction (see `_fma32`).
   Measured: 0 differing float32 values over 27.6 M outputs of random sizes against torch
   2.14.1 with 2 threads. To save time, a float32 estimate decides every uint8 value that
   is certain and only the ~0.1% near a truncation boundary get the exact emulation
   (`_generic_kernel`). With exactly ONE torch thread PyTorch switches to its channels-last
   kernel: weights `w_yx = wy * wx` (float32) and
   `fma(i11, w11, fma(i10, w10, fma(i00, w00, i01 * w01)))`; its results differ in the last
   bit (535 of 165 M uint8 values off by 1 over 239 random crops). The default ("generic") is the
   multi-thread kernel, which the reference uses on any machine with more than one core;
   `kernel="single_thread"` / `EDGENET_RESIZE_KERNEL=single_thread` reproduces a reference
   run with one torch thread (OMP_NUM_THREADS=1, 1-core machines). Both are bit-exact against
   their torch counterpart in the tests. Other builds (a non-FMA x86 CPU, ARM) may round
   differently in torch itself.
4. `F.convert_image_dtype(uint8)`: `x * float32(255 + 1 - 1e-3)`, truncated to uint8.

`full_image` classifiers crop top and bottom to `max(int(h*0.7), h-400)` rows centred as
`F.center_crop` does it (offset `int(round((h - th) / 2.0))`, Python's round-half-even).
Crops that come out empty (e.g. a box narrower than one pixel) make torch raise; we raise
`CropError` and the pipeline records a CLASSIFIER failure for the image, as the reference does.

Model input: the reference divides the uint8 HWC crops by 255.0 in float64 and stacks them as
float32 (`np.stack(..., dtype=float32)`), then runs them in chunks of 8 crops (a memory
measure; per-crop results do not depend on it beyond float rounding of batched kernels, so
edgenet batches crops as the pipeline likes).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from edgenet.constants import (
    CLASSIFIER_IMG_SIZE,
    FULL_IMAGE_MAX_CROP_RATIO,
    FULL_IMAGE_MAX_CROP_SIZE,
)
from edgenet.errors import EdgenetError, InputError
from edgenet.unit_scale import unit_float16

__all__ = [
    "ClassifierModel",
    "CropError",
    "classifications",
    "crop_for_classifier",
    "full_image_crop",
    "image_array",
    "RESIZE_KERNELS",
    "preprocess_input",
    "read_target_species",
    "resize_kernel",
    "select_detections_for_classification",
]

_F32 = np.float32
# uint8 -> float32, as torch's `uint8_tensor.to(float32) / 255.0` (float32 true division).
_U8_TO_UNIT = (np.arange(256, dtype=np.float32) / np.float32(255.0)).astype(np.float32)
# torchvision convert_image_dtype float -> uint8 factor: 255 + 1.0 - 1e-3, as float32.
_TO_U8_FACTOR = _F32(255 + 1.0 - 1e-3)
_U8_TO_UNIT64 = _U8_TO_UNIT.astype(np.float64)
_TIE_MASK = np.int64((1 << 29) - 1)
_TIE_HALF = np.int64(1 << 28)
RESIZE_KERNELS = ("generic", "single_thread")
# `_generic_kernel`: pixel levels 0-255 straight to the uint8 scale, and its safety margin.
_TO_U8_PER_LEVEL = _F32(float(_TO_U8_FACTOR) / 255.0)
_SURE_MARGIN = _F32(5e-4)


class CropError(ValueError):
    """The crop is empty (torch's interpolate raises); the image gets a CLASSIFIER failure."""


def _fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 fused multiply-add `round32(a*b + c)` with a single rounding, vectorised.

    Why: PyTorch's compiled kernel contracts `a*b + c` into an FMA. `a*b` of two float32 is
    exact in float64; the float64 sum `s` may be rounded, and rounding `s` again to float32 is
    wrong only when `s` lands exactly on a float32 tie while the exact sum did not. TwoSum gives
    the float64 rounding error `e`; on such ties we nudge `s` one float64 ulp towards the exact
    value. Valid for finite normal float32 results (all of ours are in [0, 1] or indices).
    """
    p = np.multiply(a, b, dtype=np.float64)
    c64 = np.asarray(c, dtype=np.float64)
    s = p + c64
    tie = (s.view(np.int64) & ((1 << 29) - 1)) == (1 << 28)
    if tie.any():
        # Rare: TwoSum error term only where needed.
        p, c64 = np.broadcast_to(p, s.shape)[tie], np.broadcast_to(c64, s.shape)[tie]
        st = s[tie]
        bv = st - p
        e = (p - (st - bv)) + (c64 - bv)
        s[tie] = np.where(e != 0, np.nextafter(st, np.where(e > 0, np.inf, -np.inf)), st)
    return s.astype(np.float32)


def _fma_add(a64: np.ndarray, w64: np.ndarray, c32: np.ndarray) -> np.ndarray:
    """`_fma32(a, w, c)` on the hot path: `a64` holds float32 values as float64 (it is
    overwritten), `w64` float32 weights as float64, `c32` float32; one rounding to float32."""
    p = np.multiply(a64, w64, out=a64)  # exact: 24-bit x 24-bit mantissas fit in float64
    s = p + c32
    tie = (s.view(np.int64) & _TIE_MASK) == _TIE_HALF
    if tie.any():  # rare: exact-tie correction as in `_fma32`
        pt, ct, st = p[tie], c32[tie].astype(np.float64), s[tie]
        bv = st - pt
        e = (pt - (st - bv)) + (ct - bv)
        s[tie] = np.where(e != 0, np.nextafter(st, np.where(e > 0, np.inf, -np.inf)), st)
    return s.astype(np.float32)


@functools.lru_cache(maxsize=512)
def _linear_table(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of PyTorch's bilinear (align_corners=False) for one axis."""
    scale = np.full(n_out, _F32(n_in) / _F32(n_out), dtype=np.float32)
    dst = np.arange(n_out, dtype=np.float32) + _F32(0.5)
    src = _fma32(scale, dst, np.full(n_out, -0.5, dtype=np.float32))
    src = np.where(src < 0, _F32(0), src).astype(np.float32)
    idx0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    lam = np.minimum(np.maximum(src - idx0.astype(np.float32), _F32(0)), _F32(1))
    lam = lam.astype(np.float32)
    w0 = (_F32(1) - lam).astype(np.float32)
    idx1 = idx0 + (idx0 < n_in - 1).astype(np.int64)
    for arr in (idx0, idx1, w0, lam):
        arr.setflags(write=False)
    return idx0, idx1, w0, lam


def image_array(img: PIL.Image.Image | np.ndarray) -> np.ndarray:
    """HWC uint8 RGB view of an image (convert a PIL image once, then crop it many times)."""
    arr = np.asarray(img)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {arr.dtype} {arr.shape}")
    return arr


def _crop_axis(size: int, start: int, length: int) -> np.ndarray:
    """Indices (into the image axis, -1 = zero padding) of torchvision's tensor crop on one axis.

    torchvision slices `img[max(start, 0):start + length]` with Python semantics (a negative end
    wraps around) and pads `max(-start + min(0, end), 0)` before and `max(end - max(size,
    start), 0)` after with zeros; we reproduce the resulting index sequence exactly.
    """
    end = start + length
    if start < 0 or end > size:
        before = max(-start + min(0, end), 0)
        after = max(end - max(size, start), 0)
        inside = np.arange(size, dtype=np.int64)[max(start, 0):end]
        return np.concatenate(
            [np.full(before, -1, np.int64), inside, np.full(after, -1, np.int64)]
        )
    return np.arange(size, dtype=np.int64)[start:end]


def resize_kernel(kernel: str | None = None) -> str:
    """Which PyTorch bilinear kernel to reproduce: argument, else `EDGENET_RESIZE_KERNEL`,
    else "generic" (the reference on any multi-core CPU). "single_thread" reproduces PyTorch
    run with exactly one intra-op thread (e.g. OMP_NUM_THREADS=1 or a 1-core machine)."""
    kernel = kernel or os.environ.get("EDGENET_RESIZE_KERNEL", "").strip() or "generic"
    if kernel not in RESIZE_KERNELS:
        raise EdgenetError(
            f"unknown resize kernel {kernel!r}",
            fix=f"use one of {', '.join(RESIZE_KERNELS)} (EDGENET_RESIZE_KERNEL)",
        )
    return kernel


def _single_thread_kernel(
    arr: np.ndarray, r0: np.ndarray, r1: np.ndarray, c0: np.ndarray, c1: np.ndarray,
    wy: tuple[np.ndarray, np.ndarray], wx: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """PyTorch's channels-last bilinear kernel (used with one thread and C == 3):
    weights w_yx = wy * wx in float32, then, as GCC contracts the scalar loop,
    fma(i11, w11, fma(i10, w10, fma(i00, w00, i01 * w01)))."""

    def gather(r: np.ndarray, c: np.ndarray) -> np.ndarray:
        vals = _U8_TO_UNIT64[arr[np.maximum(r, 0)[:, None], np.maximum(c, 0)[None, :]]]
        if (r < 0).any() or (c < 0).any():
            vals[(r < 0)[:, None] | (c < 0)[None, :]] = 0.0
        return vals

    def weight(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a[:, None] * b[None, :]).astype(np.float32)[:, :, None]

    w00, w01 = weight(wy[0], wx[0]), weight(wy[0], wx[1])
    w10, w11 = weight(wy[1], wx[0]), weight(wy[1], wx[1])
    acc = (gather(r0, c1) * w01).astype(np.float32)
    acc = _fma_add(gather(r0, c0), w00.astype(np.float64), acc)
    acc = _fma_add(gather(r1, c0), w10.astype(np.float64), acc)
    return _fma_add(gather(r1, c1), w11.astype(np.float64), acc)


def _resize_crop(
    arr: np.ndarray, rows: np.ndarray, cols: np.ndarray, out_size: int = CLASSIFIER_IMG_SIZE,
    kernel: str | None = None,
) -> np.ndarray:
    """Bilinear resize of the virtual crop `arr[rows][:, cols]` (-1 = zero) to uint8 HWC."""
    if len(rows) == 0 or len(cols) == 0:
        raise CropError(
            f"empty crop ({len(rows)}x{len(cols)} pixels): torch cannot resize it"
        )
    y0, y1, wy0, wy1 = _linear_table(len(rows), out_size)
    x0, x1, wx0, wx1 = _linear_table(len(cols), out_size)
    r0, r1, c0, c1 = rows[y0], rows[y1], cols[x0], cols[x1]
    if resize_kernel(kernel) == "single_thread":
        if len(rows) == out_size and len(cols) == out_size:
            out = _U8_TO_UNIT[arr[np.maximum(rows, 0)[:, None], np.maximum(cols, 0)[None, :]]]
            out[(rows < 0)[:, None] | (cols < 0)[None, :]] = 0.0  # F.resize returns it as is
        else:
            out = _single_thread_kernel(arr, r0, r1, c0, c1, (wy0, wy1), (wx0, wx1))
        return (out * _TO_U8_FACTOR).astype(np.uint8)

    return _generic_kernel(arr, r0, r1, c0, c1, (wy0, wy1), (wx0, wx1), out_size)


def _generic_kernel(
    arr: np.ndarray, r0: np.ndarray, r1: np.ndarray, c0: np.ndarray, c1: np.ndarray,
    wy: tuple[np.ndarray, np.ndarray], wx: tuple[np.ndarray, np.ndarray], out_size: int,
) -> np.ndarray:
    """PyTorch's generic bilinear kernel to uint8, bit for bit, computed in two steps.

    1. A fast float32 estimate `y'` of the scaled value `y = out * 255.999` from the pixel
       values 0-255 (the 1/255 folded into the height weights): a handful of float32
       roundings on each side, so |y' - y| < 2e-4 for y < 256.
    2. Where `y'` lies within `_SURE_MARGIN` (5e-4) of an integer (except just above 0, which
       the exact y cannot cross: every term is >= 0) its truncation could differ from the
       reference's: those values, ~0.1% of a real crop, are recomputed exactly
       (`_exact_values`); everywhere else trunc(y') == trunc(y).
    The exact emulation alone (float64 fma emulation over every value) costs about twice as
    much: 27 crops of a 3 MP image took 0.38 s on one core with it, 0.21-0.25 s this way
    (benchmarks/NOTES.md, entry 18).
    """
    wy0, wy1 = wy
    wx0, wx1 = wx
    needed, inverse = np.unique(np.concatenate([r0, r1]), return_inverse=True)
    both_cols = np.concatenate([c0, c1])
    band = arr.take(np.maximum(needed, 0), axis=0)  # (rows needed, W, 3) uint8
    pair = band.take(np.maximum(both_cols, 0), axis=1).astype(np.float32)  # (n, 2*out, 3)
    if (needed < 0).any():
        pair[needed < 0] = 0.0
    if (both_cols < 0).any():
        pair[:, both_cols < 0] = 0.0
    pair *= np.concatenate([wx0, wx1])[None, :, None]
    horiz = pair[:, :out_size]
    horiz += pair[:, out_size:]
    upper = horiz.take(inverse[:out_size], axis=0)
    lower = horiz.take(inverse[out_size:], axis=0)
    upper *= (wy0 * _TO_U8_PER_LEVEL)[:, None, None]
    lower *= (wy1 * _TO_U8_PER_LEVEL)[:, None, None]
    upper += lower  # y'
    out = upper.astype(np.uint8)  # truncation, as torch's float -> uint8
    upper -= out  # fractional part, exact
    unsure = (upper > 1 - _SURE_MARGIN) | ((upper < _SURE_MARGIN) & (out > 0))
    if unsure.any():
        flat = np.flatnonzero(unsure)  # much faster than a 3-D np.nonzero
        ii, rest = np.divmod(flat, out_size * 3)
        jj, ch = np.divmod(rest, 3)
        out[ii, jj, ch] = _exact_values(arr, (r0[ii], r1[ii]), (c0[jj], c1[jj]),
                                        (wy0[ii], wy1[ii]), (wx0[jj], wx1[jj]), ch)
    return out


def _exact_values(
    arr: np.ndarray, rows: tuple[np.ndarray, np.ndarray], cols: tuple[np.ndarray, np.ndarray],
    wy: tuple[np.ndarray, np.ndarray], wx: tuple[np.ndarray, np.ndarray], ch: np.ndarray,
) -> np.ndarray:
    """PyTorch's generic kernel at single output values (1-D arrays, one entry per value):
    width pass `fma(x0, wx0, x1 * wx1)` on both source rows, height pass `fma(t0, wy0, t1 *
    wy1)`, all float32 with one rounding per fma (`_fma32`), then uint8 conversion."""

    def pixel(r: np.ndarray, c: np.ndarray) -> np.ndarray:
        values = _U8_TO_UNIT64[arr[np.maximum(r, 0), np.maximum(c, 0), ch]]
        return np.where((r < 0) | (c < 0), 0.0, values)

    def width_pass(r: np.ndarray) -> np.ndarray:
        right = (pixel(r, cols[1]).astype(np.float32) * wx[1]).astype(np.float32)
        return _fma32(pixel(r, cols[0]), wx[0].astype(np.float64), right)

    lower = (width_pass(rows[1]) * wy[1]).astype(np.float32)
    out = _fma32(width_pass(rows[0]), wy[0].astype(np.float64), lower)
    return (out * _TO_U8_FACTOR).astype(np.uint8)


def crop_for_classifier(
    img: PIL.Image.Image | np.ndarray, bbox: Sequence[float], *, kernel: str | None = None
) -> np.ndarray:
    """The reference's `always_crop` crop of `bbox` = [xmin, ymin, width, height] (normalised).

    Returns uint8 (480, 480, 3). Raises `CropError` when the crop is empty. `kernel`: see
    `resize_kernel`. Pass an `image_array(img)` when cropping one image many times.
    """
    arr = image_array(img)
    height, width = arr.shape[:2]
    xmin, ymin, bw, bh = (float(v) for v in bbox)
    top, left = int(ymin * height), int(xmin * width)
    crop_h, crop_w = int(bh * height), int(bw * width)
    rows = _crop_axis(height, top, crop_h)
    cols = _crop_axis(width, left, crop_w)
    return _resize_crop(arr, rows, cols, kernel=kernel)


def full_image_crop(
    img: PIL.Image.Image | np.ndarray, *, kernel: str | None = None
) -> np.ndarray:
    """The reference's `full_image` crop: drop top/bottom bands, resize to uint8 (480, 480, 3)."""
    arr = image_array(img)
    height, width = arr.shape[:2]
    target_h = max(
        int(height * (1.0 - FULL_IMAGE_MAX_CROP_RATIO)), height - FULL_IMAGE_MAX_CROP_SIZE
    )
    # F.center_crop: no padding needed (target_h <= height); offsets rounded half-to-even.
    top = int(round((height - target_h) / 2.0))
    left = int(round((width - width) / 2.0))
    rows = _crop_axis(height, top, target_h)
    cols = _crop_axis(width, left, width)
    return _resize_crop(arr, rows, cols, kernel=kernel)


def select_detections_for_classification(
    detections: Sequence[dict],
    threshold: float,
    max_classifications: int | None = None,
) -> list[int]:
    """Indices of the detections to classify, ascending (speciesnet utils function).

    Those with conf >= threshold; when `max_classifications` is a non-negative int, only the
    most confident ones (stable sort, so equal confidences keep the earlier detection).
    """
    indices = [i for i, det in enumerate(detections) if det["conf"] >= threshold]
    if max_classifications is not None and max_classifications >= 0:
        indices = sorted(indices, key=lambda i: detections[i]["conf"], reverse=True)
        indices = sorted(indices[:max_classifications])
    return indices


def preprocess_input(batch: np.ndarray, dtype: type[np.floating] = np.float32) -> np.ndarray:
    """Model input NHWC float32 from uint8 crops, as the reference (float64 /255.0, float32);
    DTYPE float16: those values rounded to float16 (fp16 packs)."""
    arr = np.asarray(batch)
    if arr.dtype == np.uint8 and dtype == np.float16:
        return unit_float16(arr)  # 1.8x cheaper than float32 then astype (unit_scale.py)
    if arr.dtype == np.uint8:
        # float32 division equals the reference's float64 division rounded to float32 for
        # every uint8 value (tests/test_classifier.py) and costs less than a table lookup.
        arr = np.divide(arr, _F32(255.0), dtype=np.float32)
    return arr.astype(dtype, copy=False)


def _softmax32(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float32 (torch.softmax to ~1e-7; torch's vectorised exp
    is an approximation, so the last bits can differ, far inside the 1e-3 tolerance)."""
    x = np.asarray(logits, dtype=np.float32)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True, dtype=np.float32)).astype(np.float32)


def _partial_sort_top(values: Sequence[float], k: int) -> list[int]:
    """The first K indices of libstdc++'s `std::partial_sort` of (value, index) pairs with
    torch.topk's comparator (larger first, NaN largest), tie order included.

    Why: torch.topk on CPU uses exactly this when k * 64 <= n (ATen's TopKImpl.h), and its
    order among EQUAL scores is whatever this heap algorithm leaves. Such ties are real: a
    confident classifier's softmax underflows to exactly 0.0 for every class beyond the top
    one or two (a logit gap > ~104), and speciesnet still reports k classes, the zero-score
    ones in this order (measured: torch.topk of a one-hot 2498-vector with k=5 gives
    [hot, 1, 3, 4, 0]). Plain Python over the n values: used only for rows with such ties.
    """
    import math

    vals = list(values)
    q = list(range(len(vals)))

    def comp(a: int, b: int) -> bool:
        va, vb = vals[a], vals[b]
        return (math.isnan(va) and not math.isnan(vb)) or va > vb

    def push_heap(hole: int, top: int, value: int) -> None:
        parent = (hole - 1) // 2
        while hole > top and comp(q[parent], value):
            q[hole] = q[parent]
            hole = parent
            parent = (hole - 1) // 2
        q[hole] = value

    def adjust_heap(hole: int, length: int, value: int) -> None:
        top = hole
        child = hole
        while child < (length - 1) // 2:
            child = 2 * (child + 1)
            if comp(q[child], q[child - 1]):
                child -= 1
            q[hole] = q[child]
            hole = child
        if length % 2 == 0 and child == (length - 2) // 2:
            child = 2 * (child + 1)
            q[hole] = q[child - 1]
            hole = child - 1
        push_heap(hole, top, value)

    def pop_heap(last: int, result: int) -> None:
        value = q[result]
        q[result] = q[0]
        adjust_heap(0, last, value)

    if k >= 2:  # make_heap on [0, k)
        parent = (k - 2) // 2
        while True:
            adjust_heap(parent, k, q[parent])
            if parent == 0:
                break
            parent -= 1
    for i in range(k, len(q)):  # heap_select
        if comp(q[i], q[0]):
            pop_heap(k, i)
    last = k
    while last > 1:  # sort_heap
        last -= 1
        pop_heap(last, last)
    return q[:k]


def _topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores per row, highest first, in torch.topk's (CPU) order.

    Rows whose top k + 1 scores hold a tie are ordered as torch orders ties (see
    `_partial_sort_top`, exact for k * 64 <= n, which covers speciesnet's k = 5 over 2498
    labels); otherwise ties are broken lower index first, and rows without ties sort plainly.
    """
    n = scores.shape[-1]
    index = np.broadcast_to(np.arange(n), scores.shape)
    full = np.lexsort((index, -scores), axis=-1)
    order = full[:, :k].copy()
    if k * 64 <= n:
        for row in range(scores.shape[0]):
            ranked = scores[row, full[row, :min(k + 1, n)]]  # the top k and the next one
            if np.any(ranked[1:] == ranked[:-1]):
                order[row] = _partial_sort_top(scores[row].tolist(), k)
    return order


def read_target_species(path: str | os.PathLike[str],
                        labels: Sequence[str]) -> tuple[list[str], list[int]]:
    """Target labels (lines kept only if they are known labels, duplicates kept, file order)
    and their label indices, as the reference builds `target_labels` / `target_idx`."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines(keepends=True)
    except FileNotFoundError as e:
        raise InputError("target species file not found", path=p,
                         fix="pass an existing --target-species-txt file") from e
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read target species file ({e})", path=p,
                         fix="pass a UTF-8 text file with one label per line") from e
    known = set(labels)
    targets = [line.strip() for line in lines if line.strip() in known]
    label_to_idx = {label: idx for idx, label in enumerate(labels)}  # last duplicate wins
    return targets, [label_to_idx[t] for t in targets]


def classifications(
    logits: np.ndarray,
    k: int | None,
    labels: Sequence[str],
    target: tuple[list[str], list[int]] | None = None,
) -> list[dict[str, Any]]:
    """Per-crop {"classes", "scores"} (+ "target_classes", "target_logits") dicts.

    `k=None` reports every class; otherwise min(k, number of labels). Target logits are read
    from each crop's own logits row (float32 value as a Python float).
    """
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, L), got shape {logits.shape}")
    if logits.shape[0] == 0:
        return []
    num_labels = logits.shape[1]
    kk = num_labels if k is None else min(k, num_labels)
    scores = _softmax32(logits)
    idx = _topk(scores, kk)
    top_scores = np.take_along_axis(scores, idx, axis=-1)
    out: list[dict[str, Any]] = []
    for row in range(logits.shape[0]):
        item: dict[str, Any] = {
            "classes": [labels[i] for i in idx[row]],
            "scores": top_scores[row].tolist(),
        }
        if target is not None:
            names, tidx = target
            item["target_classes"] = list(names)
            item["target_logits"] = [float(logits[row, i]) for i in tidx]
        out.append(item)
    return out


class ClassifierModel:
    """The species classifier on onnxruntime: NHWC (N, 480, 480, 3) in, logits (N, L) out."""

    def __init__(
        self,
        path: str | Path,
        labels: Sequence[str],
        device: str = "auto",
        threads: int | None = None,
        precision: str = "fp32",
        target_species_txt: str | os.PathLike[str] | None = None,
        session: Any | None = None,
    ) -> None:
        """Open the model (or reuse `session`, e.g. the one `ModelPack` inspected)."""
        self.path = Path(path)
        self.labels = list(labels)
        if session is None:
            from edgenet.providers import make_session

            session = make_session(self.path, device, threads, precision)
        self.session = session
        # Rows per session run, padded (set by the pipeline on GPU providers; see
        # `edgenet.providers.SHAPE_SENSITIVE_PROVIDERS`). None: whatever arrives.
        self.fixed_batch: int | None = None
        # uint8 crops in, converted by a second session on the same provider (set by the
        # pipeline: `EDGENET_DEVICE_PIXELS`; `providers.run_model_rows` runs both).
        self.device_pixels = False
        self._pixels_session: Any | None = None
        # `EDGENET_CUDA_GRAPH=1` (set by `components`): fixed-size runs at one pair of bound
        # buffers, replayed as a CUDA graph on CUDA (`edgenet.cuda_graph`); `plain_session`
        # builds the session it falls back to.
        self.fixed_binding = False
        self._fixed_runner: Any | None = None
        self.plain_session: Callable[[], Any] | None = None
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        self.output_name = session.get_outputs()[0].name
        width = session.get_outputs()[0].shape[-1]
        if isinstance(width, int) and width != len(self.labels):
            raise EdgenetError(
                f"classifier has {width} outputs but {len(self.labels)} labels were given",
                path=self.path, fix="use the labels file that belongs to this classifier",
            )
        self.target = (
            read_target_species(target_species_txt, self.labels)
            if target_species_txt is not None
            else None
        )

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits float32 (N, L) for uint8 crops (or already-scaled float NHWC input). With
        `device_pixels`, uint8 crops go to the session as they are and a second session on
        the same provider scales them (on the GPU there)."""
        from edgenet.providers import run_model_rows

        arr = np.asarray(batch)
        if arr.shape[0] == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        if not (self.device_pixels and arr.dtype == np.uint8):  # else scaled on the device
            arr = preprocess_input(arr, self.input_dtype)
        logits = np.asarray(run_model_rows(self, arr, "classifier", nchw=False),
                            dtype=np.float32)
        if logits.ndim != 2 or logits.shape[1] != len(self.labels):
            # Only reachable when the model's output width is symbolic (pack check skipped).
            raise EdgenetError(
                f"classifier returned logits of shape {logits.shape} for {len(self.labels)} "
                "labels", path=self.path, fix="use the labels file that belongs to this model",
            )
        return logits

    def classifications(self, logits: np.ndarray, k: int | None = 5) -> list[dict[str, Any]]:
        """Top-k dicts for each row of `logits`, with target species when configured."""
        return classifications(logits, k, self.labels, self.target)
