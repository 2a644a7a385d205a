"""Properties of edgenet.nms against slow, obviously-correct pure-Python versions.

The bit-for-bit comparison with yolov5/torchvision themselves is in test_detector.py
(`-m reference`); here the vectorised code is checked against straight transcriptions of
the algorithms it claims to implement.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgenet import nms
from edgenet.detector import letterboxed_shape

F32 = np.float32


# ---------------------------------------------------------------------------------------------
# Slow references
# ---------------------------------------------------------------------------------------------


def slow_std_sort_desc(values: list[float]) -> list[int]:
    """libstdc++ std::sort over (value, index) pairs with comp(a, b) = a.value > b.value,
    transcribed element by element (introsort loop, median-of-3, unguarded partition,
    heap fallback, final insertion sort)."""
    v = list(values)
    ix = list(range(len(v)))

    def swap(a: int, b: int) -> None:
        v[a], v[b] = v[b], v[a]
        ix[a], ix[b] = ix[b], ix[a]

    def comp(a: int, b: int) -> bool:
        return v[a] > v[b]

    def heap_sort(first: int, last: int) -> None:
        # __partial_sort(first, last, last) = make_heap + sort_heap, via __adjust_heap.
        def adjust(hole: int, length: int, value: tuple[float, int]) -> None:
            top = hole
            child = hole
            while child < (length - 1) // 2:
                child = 2 * (child + 1)
                if v[first + child] > v[first + child - 1]:
                    child -= 1
                v[first + hole], ix[first + hole] = v[first + child], ix[first + child]
                hole = child
            if length % 2 == 0 and child == (length - 2) // 2:
                child = 2 * (child + 1)
                v[first + hole], ix[first + hole] = v[first + child - 1], ix[first + child - 1]
                hole = child - 1
            parent = (hole - 1) // 2
            while hole > top and v[first + parent] > value[0]:
                v[first + hole], ix[first + hole] = v[first + parent], ix[first + parent]
                hole = parent
                parent = (hole - 1) // 2
            v[first + hole], ix[first + hole] = value

        n = last - first
        if n >= 2:
            parent = (n - 2) // 2
            while True:
                adjust(parent, n, (v[first + parent], ix[first + parent]))
                if parent == 0:
                    break
                parent -= 1
        end = n
        while end > 1:
            end -= 1
            value = (v[first + end], ix[first + end])
            v[first + end], ix[first + end] = v[first], ix[first]
            adjust(0, end, value)

    def loop(first: int, last: int, depth: int) -> None:
        while last - first > 16:
            if depth == 0:
                heap_sort(first, last)
                return
            depth -= 1
            a, b, c = first + 1, first + (last - first) // 2, last - 1
            if comp(a, b):
                if comp(b, c):
                    swap(first, b)
                elif comp(a, c):
                    swap(first, c)
                else:
                    swap(first, a)
            elif comp(a, c):
                swap(first, a)
            elif comp(b, c):
                swap(first, c)
            else:
                swap(first, b)
            lo, hi = first + 1, last
            while True:
                while comp(lo, first):
                    lo += 1
                hi -= 1
                while comp(first, hi):
                    hi -= 1
                if not lo < hi:
                    break
                swap(lo, hi)
                lo += 1
            loop(lo, last, depth)
            last = lo

    n = len(v)
    if n > 1:
        loop(0, n, 2 * int(math.floor(math.log2(n))))
        for i in range(1, n):  # insertion sort (the final pass)
            j = i
            while j > 0 and v[j] > v[j - 1]:
                swap(j, j - 1)
                j -= 1
    return ix


def slow_greedy_nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    """torchvision's CPU nms kernel, one float32 scalar operation at a time."""
    n = len(boxes)
    order = sorted(range(n), key=lambda k: -float(scores[k]))  # stable, descending
    areas = [F32(F32(b[2] - b[0]) * F32(b[3] - b[1])) for b in boxes]
    suppressed = [False] * n
    keep = []
    for a in range(n):
        i = order[a]
        if suppressed[i]:
            continue
        keep.append(i)
        for b in range(a + 1, n):
            j = order[b]
            if suppressed[j]:
                continue
            w = max(F32(0), F32(min(boxes[i][2], boxes[j][2]) - max(boxes[i][0], boxes[j][0])))
            h = max(F32(0), F32(min(boxes[i][3], boxes[j][3]) - max(boxes[i][1], boxes[j][1])))
            inter = F32(w * h)
            with np.errstate(invalid="ignore", divide="ignore"):
                ovr = F32(inter / F32(F32(areas[i] + areas[j]) - inter))
            if float(ovr) > thr:
                suppressed[j] = True
    return keep


def slow_non_max_suppression(pred: np.ndarray, conf_thres: float = 0.01, iou: float = 0.45,
                             max_det: int = 300) -> np.ndarray:
    """yolov5's non_max_suppression for one image, row by row."""
    thr = F32(conf_thres)
    rows = []
    for r in pred:
        if not r[4] > thr:
            continue
        scores = [F32(c * r[4]) for c in r[5:]]
        best = max(range(len(scores)), key=lambda k: (scores[k], -k))
        conf = scores[best]
        if not conf > thr:
            continue
        half_w, half_h = F32(r[2] / F32(2)), F32(r[3] / F32(2))
        rows.append([F32(r[0] - half_w), F32(r[1] - half_h), F32(r[0] + half_w),
                     F32(r[1] + half_h), conf, F32(best)])
    if not rows:
        return np.zeros((0, 6), F32)
    order = slow_std_sort_desc([float(r[4]) for r in rows])[: nms.MAX_NMS]
    rows = [rows[k] for k in order]
    offset_boxes = np.array(
        [[F32(c + F32(r[5] * F32(nms.MAX_WH))) for c in r[:4]] for r in rows], dtype=F32
    )
    keep = slow_greedy_nms(offset_boxes, np.array([r[4] for r in rows], F32), iou)[:max_det]
    return np.array([rows[k] for k in keep], dtype=F32).reshape(-1, 6)


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------

# Few distinct values so that ties (the interesting case for the sort) are common.
tied_values = st.lists(
    st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, 0.3333, 0.9, 0.01]), min_size=0, max_size=300
)


@st.composite
def raw_predictions(draw: st.DrawFn) -> np.ndarray:
    """Raw yolov5 rows with clustered boxes (so NMS has work) and quantised scores (ties)."""
    n = draw(st.integers(0, 120))
    nc = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 640, (max(1, n // 8), 2))
    pick = rng.integers(0, len(centres), n)
    cxy = centres[pick] + rng.normal(0, draw(st.sampled_from([1.0, 8.0, 40.0])), (n, 2))
    wh = rng.uniform(1, 120, (n, 2))
    quant = draw(st.sampled_from([8, 64, 4096]))
    obj = np.round(rng.uniform(0, 1, n) * quant) / quant
    cls = np.round(rng.uniform(0, 1, (n, nc)) * quant) / quant
    return np.concatenate([cxy, wh, obj[:, None], cls], axis=1).astype(F32)


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


@given(tied_values)
@settings(max_examples=200, deadline=None)
def test_argsort_matches_std_sort_transcription(values: list[float]) -> None:
    arr = np.array(values, dtype=F32)
    got = nms.torch_argsort_descending(arr)
    assert got.tolist() == slow_std_sort_desc([float(x) for x in arr])
    assert np.all(np.diff(arr[got]) <= 0)


@given(st.integers(0, 2000), st.integers(0, 2**31 - 1))
@settings(max_examples=60, deadline=None)
def test_argsort_without_ties_is_plain_descending_sort(n: int, seed: int) -> None:
    arr = np.random.default_rng(seed).permutation(np.linspace(0, 1, n, dtype=F32))
    assert len(np.unique(arr)) == n
    assert nms.torch_argsort_descending(arr).tolist() == np.argsort(-arr, kind="stable").tolist()


def test_argsort_heap_fallback_matches_transcription() -> None:
    # Median-of-3 "killer" input drives introsort to its depth limit and into heapsort.
    n = 512
    arr = np.zeros(n, dtype=F32)
    k = n // 2
    for i in range(1, k + 1):  # Musser's construction for median-of-3 quicksort
        if i % 2:
            arr[i - 1], arr[i] = i, k + i
        arr[k + i - 1] = 2 * i
    values = (-arr).tolist()  # descending comparator: negate
    values = [float(x) for x in np.array(values, F32)] + [0.0] * 7  # a few ties as well
    got = nms.torch_argsort_descending(np.array(values, F32))
    assert got.tolist() == slow_std_sort_desc(values)


@given(raw_predictions())
@settings(max_examples=60, deadline=None)
def test_greedy_nms_matches_slow_version(pred: np.ndarray) -> None:
    boxes = nms.xywh2xyxy(pred[:, :4])
    scores = pred[:, 4]
    got = nms.greedy_nms(boxes, scores, 0.45)
    assert got.tolist() == slow_greedy_nms(boxes, scores, 0.45)


@given(raw_predictions(), st.sampled_from([0.01, 0.25, 0.5]), st.sampled_from([1, 5, 300]))
@settings(max_examples=60, deadline=None)
def test_non_max_suppression_matches_slow_version(pred: np.ndarray, conf: float,
                                                  max_det: int) -> None:
    got = nms.non_max_suppression(pred, conf_thres=conf, max_det=max_det)
    want = slow_non_max_suppression(pred, conf_thres=conf, max_det=max_det)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    assert len(got) <= max_det
    assert np.all(got[:, 4] > F32(conf))
    assert np.all(np.diff(got[:, 4]) <= 0)


def test_nms_suppresses_same_class_only() -> None:
    # Two identical boxes of different classes both survive; a same-class twin does not.
    pred = np.array(
        [
            [100, 100, 50, 50, 0.9, 1.0, 0.0],
            [100, 100, 50, 50, 0.8, 0.0, 1.0],
            [101, 100, 50, 50, 0.7, 1.0, 0.0],
        ],
        dtype=F32,
    )
    out = nms.non_max_suppression(pred)
    assert out[:, 5].tolist() == [0.0, 1.0]
    assert out[:, 4].tolist() == [F32(0.9), F32(0.8)]
    agnostic = nms.non_max_suppression(pred, agnostic=True)
    assert len(agnostic) == 1


def test_nms_threshold_is_strict_and_empty_cases() -> None:
    pred = np.array([[10, 10, 4, 4, 0.01, 1.0], [10, 10, 4, 4, 0.5, 0.02]], dtype=F32)
    assert nms.non_max_suppression(pred).shape == (0, 6)  # 0.01 not > 0.01; 0.5*0.02 == 0.01
    assert nms.non_max_suppression(np.zeros((0, 8), F32)).shape == (0, 6)
    with pytest.raises(ValueError):
        nms.non_max_suppression(np.zeros((5, 5), F32))


def test_max_nms_cuts_lowest_scores_before_suppression() -> None:
    rng = np.random.default_rng(0)
    n = 50
    pred = np.concatenate(
        [rng.uniform(0, 5000, (n, 2)), np.full((n, 2), 5.0), rng.uniform(0.1, 1, (n, 1)),
         np.ones((n, 1))], axis=1,
    ).astype(F32)
    out = nms.non_max_suppression(pred, max_nms=10)
    top10 = set(np.sort(pred[:, 4])[::-1][:10].tolist())
    assert 0 < len(out) <= 10 and set(out[:, 4].tolist()) <= top10
    assert len(nms.non_max_suppression(pred)) > 10


# --- boxes -------------------------------------------------------------------------------------


@st.composite
def image_and_boxes(draw: st.DrawFn) -> tuple[tuple[int, int], tuple[int, int], np.ndarray]:
    h0 = draw(st.integers(16, 4000))
    w0 = draw(st.integers(16, 4000))
    input_hw = letterboxed_shape(h0, w0)
    n = draw(st.integers(1, 20))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    x = np.sort(rng.uniform(0, w0, (n, 2)), axis=1)
    y = np.sort(rng.uniform(0, h0, (n, 2)), axis=1)
    boxes = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1).astype(F32)
    return (h0, w0), input_hw, boxes


@given(image_and_boxes())
@settings(max_examples=100, deadline=None)
def test_scale_boxes_inverts_letterbox(case: tuple) -> None:
    (h0, w0), input_hw, boxes = case
    gain = min(input_hw[0] / h0, input_hw[1] / w0)
    pad = ((input_hw[1] - w0 * gain) / 2, (input_hw[0] - h0 * gain) / 2)
    forward = boxes.astype(np.float64) * gain + np.array([pad[0], pad[1], pad[0], pad[1]])
    back = nms.scale_boxes(input_hw, forward.astype(F32), (h0, w0))
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, boxes, atol=2e-3 * max(h0, w0) / 100 + 1e-2)
    assert back[:, [0, 2]].min() >= 0 and back[:, [0, 2]].max() <= w0
    assert back[:, [1, 3]].min() >= 0 and back[:, [1, 3]].max() <= h0


def test_clip_boxes_clamps_each_axis() -> None:
    boxes = np.array([[-5, -6, 700, 900], [10, 20, 30, 40]], dtype=F32)
    nms.clip_boxes(boxes, (480, 640))
    assert boxes.tolist() == [[0, 0, 640, 480], [10, 20, 30, 40]]


@given(image_and_boxes())
@settings(max_examples=100, deadline=None)
def test_md_bboxes_are_rounded_normalised_top_left(case: tuple) -> None:
    (h0, w0), input_hw, boxes = case
    det = np.concatenate([boxes, np.ones((len(boxes), 2), F32)], axis=1)
    gain = min(input_hw[0] / h0, input_hw[1] / w0)
    pad = ((input_hw[1] - w0 * gain) / 2, (input_hw[0] - h0 * gain) / 2)
    det[:, [0, 2]] = det[:, [0, 2]] * F32(gain) + F32(pad[0])
    det[:, [1, 3]] = det[:, [1, 3]] * F32(gain) + F32(pad[1])
    out = nms.md_bboxes_from_nms(det, input_hw, w0, h0)
    assert out.dtype == np.float64 and out.shape == (len(boxes), 4)
    # Pixel corners are integers (yolov5's .round()), so x * w0 lands on an integer.
    xmin_px = out[:, 0] * w0
    width_px = out[:, 2] * w0
    np.testing.assert_allclose(xmin_px, np.round(xmin_px), atol=1e-3)
    np.testing.assert_allclose(width_px, np.round(width_px), atol=1e-3)
    np.testing.assert_allclose(out[:, 0], boxes[:, 0] / w0, atol=1.01 / w0 + 1e-4)
    np.testing.assert_allclose(out[:, 1], boxes[:, 1] / h0, atol=1.01 / h0 + 1e-4)
    assert np.all(out[:, 2:] >= 0)
    assert np.all(out[:, 0] + out[:, 2] <= 1 + 1e-6) and np.all(out[:, 1] + out[:, 3] <= 1 + 1e-6)


def test_xyxy2xywhn_and_md_conversion_formula() -> None:
    xyxy = np.array([[10, 20, 110, 70]], dtype=F32)
    xywhn = nms.xyxy2xywhn(xyxy, w=200, h=100)
    assert xywhn.dtype == np.float32
    assert xywhn.tolist() == [[F32(0.3), F32(0.45), F32(0.5), F32(0.5)]]
    md = nms.xywhn_to_md_bboxes(xywhn)
    # top-left computed in double from the float32 centre and size, as speciesnet does
    assert md[0, 0] == float(F32(0.3)) - float(F32(0.5)) / 2.0
    assert md[0, 1] == float(F32(0.45)) - float(F32(0.5)) / 2.0


def test_round_is_half_to_even_like_torch() -> None:
    # Boxes landing exactly on .5 after unscaling: torch.round and numpy both round to even.
    det = np.array([[2.5, 3.5, 10.5, 11.5, 0.9, 0]], dtype=F32)
    out = nms.md_bboxes_from_nms(det, (64, 64), 64, 64)  # identity letterbox
    assert (out[0] * 64).round(6).tolist() == [2.0, 4.0, 8.0, 8.0]
