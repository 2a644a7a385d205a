"""yolov5 7.0.11 `non_max_suppression` and box post-processing, in numpy.

speciesnet 5.0.6 runs MegaDetector's raw output through yolov5's torch code:
`non_max_suppression(pred, conf_thres=0.01)` (iou 0.45, per-class, best class only,
max 300 boxes, at most 30000 boxes into `torchvision.ops.nms`), then
`scale_boxes(...).round()`, then `xyxy2xywhn` and a conversion to MegaDetector's
[xmin, ymin, width, height]. This module reproduces those steps bit for bit on CPU,
which is why it looks fussier than a textbook NMS:

* Every arithmetic step is float32 where torch computes in float32, in the same order.
  Python-float scalars (thresholds, pads, gains) are rounded to float32 first, as torch
  does when it combines a float32 tensor with a Python scalar. The one exception is the
  IoU threshold inside torchvision's C++ kernel, which compares a float32 IoU against a
  double threshold: we do the same.
* yolov5 orders candidates with `Tensor.argsort(descending=True)`, which on CPU is an
  *unstable* `std::sort` (libstdc++ introsort over (value, index) pairs). Whenever the
  scores contain ties, their relative order depends on that algorithm, and it leaks into
  which box suppresses which and into the order of equal-confidence detections in the
  output. `torch_argsort_descending` therefore emulates libstdc++'s introsort exactly
  (vectorised Hoare partitions; heapsort fallback in pure Python). Without ties any
  correct sort gives the same permutation, so we take numpy's fast path then.
* `torchvision.ops.nms` re-sorts the (already descending) scores with a *stable* sort,
  so its visiting order is yolov5's order; suppression is `IoU > iou_threshold` with
  IoU = inter / (area_i + area_j - inter), areas (x2 - x1) * (y2 - y1), in float32.
  Greedy suppression only depends on boxes visited earlier, so we stop once `max_det`
  boxes are kept: the rest would be cut by `i[:max_det]` anyway.

Known limit: on CPUs where the compiler fuses multiply-add (e.g. aarch64 builds of
torchvision), the reference's IoU may differ from ours in the last bit, which only matters
for IoUs within one ulp of 0.45.
"""

from __future__ import annotations

import math

import numpy as np

# yolov5's constants (utils/general.py, non_max_suppression).
MAX_WH = 7680  # class offset for per-class ("batched") NMS
MAX_NMS = 30000  # at most this many boxes go into torchvision.ops.nms
_INSERTION_THRESHOLD = 16  # libstdc++'s _S_threshold


# --------------------------------------------------------------------------------------------
# torch.argsort(descending=True) on CPU, i.e. libstdc++ std::sort over (value, index) pairs.
# --------------------------------------------------------------------------------------------


def _heapsort_desc(vals: np.ndarray, idx: np.ndarray, lo: int, hi: int) -> None:
    """libstdc++ `__partial_sort(first, last, last)` (make_heap + sort_heap) on [lo, hi).

    Only reached when introsort exhausts its depth limit, which well-spread scores never do;
    it is pure Python because it is rare and must reproduce the exact element moves.
    """
    v = vals[lo:hi].tolist()
    ix = idx[lo:hi].tolist()
    n = hi - lo

    def adjust(hole: int, length: int, value: float, vindex: int) -> None:
        top = hole
        child = hole
        while child < (length - 1) // 2:
            child = 2 * (child + 1)
            # comp(a, b) for descending order is "a > b".
            if v[child] > v[child - 1]:
                child -= 1
            v[hole], ix[hole] = v[child], ix[child]
            hole = child
        if (length & 1) == 0 and child == (length - 2) // 2:
            child = 2 * (child + 1)
            v[hole], ix[hole] = v[child - 1], ix[child - 1]
            hole = child - 1
        parent = (hole - 1) // 2
        while hole > top and v[parent] > value:
            v[hole], ix[hole] = v[parent], ix[parent]
            hole = parent
            parent = (hole - 1) // 2
        v[hole], ix[hole] = value, vindex

    if n >= 2:
        parent = (n - 2) // 2
        while True:
            adjust(parent, n, v[parent], ix[parent])
            if parent == 0:
                break
            parent -= 1
    last = n
    while last > 1:
        last -= 1
        value, vindex = v[last], ix[last]
        v[last], ix[last] = v[0], ix[0]
        adjust(0, last, value, vindex)
    vals[lo:hi] = v
    idx[lo:hi] = ix


def _unguarded_partition(vals: np.ndarray, idx: np.ndarray, first: int, last: int,
                         pivot: float) -> int:
    """libstdc++ `__unguarded_partition(first, last, pivot)` for comp = `>`, vectorised.

    The left scan stops at elements that are not > pivot, the right scan at elements that
    are not < pivot. While the k-th left stop L[k] (read off the unmodified segment) lies
    before the k-th right stop R[k], the region between the scans is untouched, so those
    are the real stops and the pair is swapped. At the first k where that fails the scans
    cross: the left scan stops at L[k], or earlier at R[k-1], which by then holds a
    swapped-in element that is not > pivot; that position is the cut.
    """
    seg = vals[first:last]
    left = np.flatnonzero(~(seg > pivot))
    right = np.flatnonzero(~(seg < pivot))[::-1]
    m = min(len(left), len(right))
    bad = np.flatnonzero(left[:m] >= right[:m])
    k = int(bad[0]) if len(bad) else m
    cut = int(left[k]) if k < len(left) else last - first
    if k:
        cut = min(cut, int(right[k - 1]))
        li = left[:k] + first
        ri = right[:k] + first
        vals[li], vals[ri] = vals[ri], vals[li].copy()
        idx[li], idx[ri] = idx[ri], idx[li].copy()
    return first + cut


def _introsort_loop(vals: np.ndarray, idx: np.ndarray, first: int, last: int, depth: int) -> None:
    """libstdc++ `__introsort_loop` (median-of-3 to first, unguarded partition, recursion)."""
    stack = [(first, last, depth)]
    while stack:
        first, last, depth = stack.pop()
        while last - first > _INSERTION_THRESHOLD:
            if depth == 0:
                _heapsort_desc(vals, idx, first, last)
                break
            depth -= 1
            # __move_median_to_first(first, first + 1, mid, last - 1), comp = ">".
            a, b, c = first + 1, first + (last - first) // 2, last - 1
            va, vb, vc = vals[a], vals[b], vals[c]
            if va > vb:
                if vb > vc:
                    m = b
                elif va > vc:
                    m = c
                else:
                    m = a
            elif va > vc:
                m = a
            elif vb > vc:
                m = c
            else:
                m = b
            vals[first], vals[m] = vals[m], vals[first]
            idx[first], idx[m] = idx[m], idx[first]
            cut = _unguarded_partition(vals, idx, first + 1, last, vals[first])
            # The reference recurses on the right part and loops on the left one; the order
            # of processing does not matter because the parts are disjoint.
            stack.append((cut, last, depth))
            last = cut


def torch_argsort_descending(values: np.ndarray) -> np.ndarray:
    """Indices that `torch.from_numpy(values).argsort(descending=True)` returns on CPU.

    Why: yolov5 sorts candidates with torch's unstable CPU sort; for tied scores the
    permutation is an artefact of libstdc++'s introsort, and we need the same one.
    `values` must be 1-D and NaN-free (NMS candidates always are: they passed `> conf`).
    """
    values = np.asarray(values)
    n = values.shape[0]
    if n < 2:
        return np.arange(n, dtype=np.int64)
    order = np.argsort(-values, kind="stable")
    sorted_vals = values[order]
    if not np.any(sorted_vals[1:] == sorted_vals[:-1]):
        return order  # all distinct: every correct sort agrees
    vals = values.copy()
    idx = np.arange(n, dtype=np.int64)
    _introsort_loop(vals, idx, 0, n, 2 * int(math.floor(math.log2(n))))
    # __final_insertion_sort: after the introsort loop the array consists of ordered blocks
    # of <= 16 elements, and a (strict-comparison) insertion sort is a stable sort of it.
    final = np.argsort(-vals, kind="stable")
    return idx[final]


# --------------------------------------------------------------------------------------------
# NMS
# --------------------------------------------------------------------------------------------


def xywh2xyxy(x: np.ndarray) -> np.ndarray:
    """yolov5 `xywh2xyxy`: (cx, cy, w, h) -> (x1, y1, x2, y2), in the input's dtype."""
    y = np.empty_like(x)
    half_w = x[..., 2] / x.dtype.type(2)
    half_h = x[..., 3] / x.dtype.type(2)
    y[..., 0] = x[..., 0] - half_w
    y[..., 1] = x[..., 1] - half_h
    y[..., 2] = x[..., 0] + half_w
    y[..., 3] = x[..., 1] + half_h
    return y


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou_thres: float,
               max_keep: int | None = None) -> np.ndarray:
    """`torchvision.ops.nms` on CPU: indices kept, in visiting (score-descending) order.

    The visiting order is a stable descending sort of `scores`, as torchvision's kernel
    does. Arithmetic is in the boxes' dtype (float32 for yolov5) with the kernel's operation
    order, and the IoU is compared with the threshold in double, like the C++ code.
    Suppressed boxes are dropped from the working arrays after each kept box (the kernel
    skips them), so clustered detections shrink the work quickly. `max_keep` stops after
    that many kept boxes (exact: later boxes never change earlier decisions).
    Non-finite coordinates are not supported bit for bit (numpy's max/min propagate NaN
    where std::max/std::min do not); a real detector does not produce them.
    """
    n = boxes.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    b = boxes[order]
    x1, y1, x2, y2 = (np.ascontiguousarray(b[:, k]) for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    alive = np.arange(n)
    zero = boxes.dtype.type(0)
    keep: list[int] = []
    limit = n if max_keep is None else max_keep
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        while alive.size:
            keep.append(int(alive[0]))
            if len(keep) >= limit or alive.size == 1:
                break
            rx1, ry1, rx2, ry2, rarea = x1[1:], y1[1:], x2[1:], y2[1:], areas[1:]
            w = np.maximum(zero, np.minimum(x2[0], rx2) - np.maximum(x1[0], rx1))
            h = np.maximum(zero, np.minimum(y2[0], ry2) - np.maximum(y1[0], ry1))
            inter = w * h
            ovr = inter / ((areas[0] + rarea) - inter)
            live = ~(ovr.astype(np.float64) > iou_thres)
            alive = alive[1:][live]
            x1, y1, x2, y2, areas = rx1[live], ry1[live], rx2[live], ry2[live], rarea[live]
    return order[np.asarray(keep, dtype=np.int64)]


def non_max_suppression(
    pred: np.ndarray,
    conf_thres: float = 0.01,
    iou_thres: float = 0.45,
    max_det: int = 300,
    agnostic: bool = False,
    max_nms: int = MAX_NMS,
) -> np.ndarray:
    """yolov5 `non_max_suppression` for one image, as speciesnet calls it.

    `pred` is one image's raw output, shape (rows, 5 + nc): cx, cy, w, h, objectness,
    class scores. Returns (K, 6) float32 rows [x1, y1, x2, y2, conf, cls] in the
    reference's order (confidence descending, ties as torch orders them), K <= max_det.
    Fixed reference settings: classes=None, multi_label=False, no masks, no merge.
    """
    pred = np.asarray(pred)
    if pred.ndim != 2 or pred.shape[1] < 6:
        raise ValueError(f"expected raw predictions of shape (rows, 5 + classes), got {pred.shape}")
    if not 0 <= conf_thres <= 1 or not 0 <= iou_thres <= 1:
        raise ValueError("conf_thres and iou_thres must lie in [0, 1]")
    dtype = pred.dtype
    thr = dtype.type(conf_thres)  # torch rounds the Python scalar to the tensor's dtype
    x = pred[pred[:, 4] > thr]
    if x.shape[0] == 0:
        return np.zeros((0, 6), dtype=dtype)
    cls_conf = x[:, 5:] * x[:, 4:5]  # conf = obj_conf * cls_conf
    box = xywh2xyxy(x[:, :4])
    j = np.argmax(cls_conf, axis=1)  # first maximal index, as torch.max(dim)
    conf = cls_conf[np.arange(cls_conf.shape[0]), j]
    det = np.concatenate([box, conf[:, None], j[:, None].astype(dtype)], axis=1)
    det = det[conf > thr]
    if det.shape[0] == 0:
        return np.zeros((0, 6), dtype=dtype)
    det = det[torch_argsort_descending(det[:, 4])[:max_nms]]
    offset = det[:, 5:6] * dtype.type(0 if agnostic else MAX_WH)
    boxes = det[:, :4] + offset
    keep = greedy_nms(boxes, det[:, 4], iou_thres, max_keep=max_det)
    return det[keep[:max_det]]


# --------------------------------------------------------------------------------------------
# Box scaling and conversion
# --------------------------------------------------------------------------------------------


def clip_boxes(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """yolov5 `clip_boxes` in place: clamp xyxy boxes to (height, width)."""
    h, w = shape
    boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, w)
    boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, h)
    return boxes


def scale_boxes(input_hw: tuple[int, int], boxes: np.ndarray,
                orig_hw: tuple[int, int]) -> np.ndarray:
    """yolov5 `scale_boxes` (no ratio_pad): undo the letterbox, then clip, in place.

    gain and pad are Python doubles computed from the shapes, exactly as yolov5 does,
    then rounded to the boxes' dtype when applied (torch's scalar semantics).
    """
    h1, w1 = int(input_hw[0]), int(input_hw[1])
    h0, w0 = int(orig_hw[0]), int(orig_hw[1])
    gain = min(h1 / h0, w1 / w0)
    pad_w = (w1 - w0 * gain) / 2
    pad_h = (h1 - h0 * gain) / 2
    t = boxes.dtype.type
    boxes[..., [0, 2]] -= t(pad_w)
    boxes[..., [1, 3]] -= t(pad_h)
    boxes[..., :4] /= t(gain)
    clip_boxes(boxes, (h0, w0))
    return boxes


def xyxy2xywhn(x: np.ndarray, w: int, h: int) -> np.ndarray:
    """yolov5 `xyxy2xywhn` (clip=False): pixel xyxy -> normalised (cx, cy, w, h)."""
    t = x.dtype.type
    y = np.empty_like(x)
    y[..., 0] = ((x[..., 0] + x[..., 2]) / t(2)) / t(w)
    y[..., 1] = ((x[..., 1] + x[..., 3]) / t(2)) / t(h)
    y[..., 2] = (x[..., 2] - x[..., 0]) / t(w)
    y[..., 3] = (x[..., 3] - x[..., 1]) / t(h)
    return y


def xywhn_to_md_bboxes(xywhn: np.ndarray) -> np.ndarray:
    """speciesnet's `_convert_yolo_xywhn_to_md_xywhn`: centre -> top-left, in float64.

    The reference converts the float32 tensor to Python floats first (`.tolist()`) and
    subtracts `width / 2.0` in double precision; we do the same.
    """
    d = np.asarray(xywhn, dtype=np.float64)
    out = d.copy()
    out[..., 0] = d[..., 0] - d[..., 2] / 2.0
    out[..., 1] = d[..., 1] - d[..., 3] / 2.0
    return out


def md_bboxes_from_nms(det: np.ndarray, input_hw: tuple[int, int],
                       orig_w: int, orig_h: int) -> np.ndarray:
    """NMS rows -> (K, 4) float64 [xmin, ymin, w, h] normalised to the original image.

    Why one function: speciesnet chains scale_boxes, `.round()`, xyxy2xywhn and the MD
    conversion; callers should not be able to get the order or the dtypes wrong.
    """
    boxes = np.array(det[:, :4], copy=True)
    scale_boxes(input_hw, boxes, (orig_h, orig_w))
    boxes = np.round(boxes)  # torch.round: half to even, like numpy
    return xywhn_to_md_bboxes(xyxy2xywhn(boxes, orig_w, orig_h))
