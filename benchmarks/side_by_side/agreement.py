"""Two predictions files compared: image by image within a tolerance (`compare_predictions`,
the "predictions vs speciesnet" column) and, for lower precisions, in the converter's
fidelity terms (`prediction_agreement`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

TOL = 1e-3  # every detection conf and box coordinate, every top-k score



def _close(a: Any, b: Any, tol: float = TOL) -> bool:
    try:
        return abs(float(a) - float(b)) <= tol
    except (TypeError, ValueError):
        return a == b


def _cmp_raw(where: str, r: Any, o: Any, problems: list[str]) -> None:
    if r is None and o is None:
        return
    if r is None or o is None:
        problems.append(f"{where}: raw_classifications present on one side only")
        return
    rc, oc = r.get("classes", []), o.get("classes", [])
    rs, os_ = r.get("scores", []), o.get("scores", [])
    if rc != oc:
        # Still a difference, but say which kind: classes ranked differently where their
        # scores agree within TOL (e.g. two classes at 0.0000 behind a top-1 of 1.0).
        tie = len(rs) == len(os_) and all(_close(a, b) for a, b in zip(rs, os_, strict=True))
        problems.append(f"{where}: top-k classes differ"
                        f"{' (order among classes with equal scores within 1e-3)' if tie else ''}"
                        f": {rc[:3]} {rs[:3]} vs {oc[:3]} {os_[:3]}")
    elif len(rs) != len(os_) or not all(_close(a, b) for a, b in zip(rs, os_, strict=True)):
        worst = max((abs(a - b) for a, b in zip(rs, os_, strict=False)), default=0.0)
        problems.append(f"{where}: raw scores differ (max {worst:.2e})")


def _same_detection(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    ab, bb = a.get("bbox") or [], b.get("bbox") or []
    return (a.get("category") == b.get("category") and _close(a.get("conf"), b.get("conf"))
            and len(ab) == len(bb) and all(_close(x, y) for x, y in zip(ab, bb, strict=True)))


def pair_detections(rd: Sequence[Mapping[str, Any]], od: Sequence[Mapping[str, Any]]
                    ) -> tuple[list[int], int]:
    """For each reference detection, the index of its edgenet counterpart; and the swaps.

    Both lists are sorted by confidence, so two detections whose confidences differ by less
    than the tolerance may come in either order from two fp32 implementations: that order is
    not a decision. A detection pairs with the one at the same index when they agree (category,
    conf and bbox within TOL), else with an unpaired agreeing one (a near-tie swap), else with
    the one at the same index (reported as a difference).
    """
    pairs: list[int] = []
    used: set[int] = set()
    swaps = 0
    for i, a in enumerate(rd):
        if i not in used and _same_detection(a, od[i]):
            j = i
        else:
            j = next((k for k in range(len(od)) if k not in used and k != i
                      and _same_detection(a, od[k])), i)
            swaps += j != i
        used.add(j)
        pairs.append(j)
    return pairs, swaps


def compare_one(ref: Mapping[str, Any], ours: Mapping[str, Any]) -> list[str]:
    """Differences between two predictions of the same image (empty: equal within TOL)."""
    fp = ref.get("filepath")
    problems: list[str] = []
    if sorted(ref.get("failures") or []) != sorted(ours.get("failures") or []):
        problems.append(f"{fp}: failures {ref.get('failures')} vs {ours.get('failures')}")
    for key in ("country", "admin1_region"):
        if ref.get(key) != ours.get(key):
            problems.append(f"{fp}: {key} {ref.get(key)!r} vs {ours.get(key)!r}")
    rd, od = ref.get("detections"), ours.get("detections")
    if (rd is None) != (od is None):
        problems.append(f"{fp}: detections present on one side only")
        return problems
    rd, od = rd or [], od or []
    if len(rd) != len(od):
        problems.append(f"{fp}: {len(rd)} vs {len(od)} detections")
        return problems
    pairs, _swaps = pair_detections(rd, od)
    for i, (a, j) in enumerate(zip(rd, pairs, strict=True)):
        b = od[j]
        where = f"{fp} det {i}" + (f" (edgenet det {j}, near-tie order)" if j != i else "")
        if a.get("category") != b.get("category"):
            problems.append(f"{where}: category {a.get('category')} vs {b.get('category')}")
        if not _close(a.get("conf"), b.get("conf")):
            problems.append(f"{where}: conf {a.get('conf')} vs {b.get('conf')}")
        ab, bb = a.get("bbox") or [], b.get("bbox") or []
        if len(ab) != len(bb) or not all(_close(x, y) for x, y in zip(ab, bb, strict=False)):
            problems.append(f"{where}: bbox {ab} vs {bb}")
        _cmp_raw(where, a.get("raw_classifications"), b.get("raw_classifications"), problems)
        pa, pb = a.get("processed_classification"), b.get("processed_classification")
        if (pa is None) != (pb is None):
            problems.append(f"{where}: processed_classification on one side only")
        elif pa is not None:
            if pa.get("class") != pb.get("class"):
                problems.append(f"{where}: processed class {pa.get('class')} vs "
                                f"{pb.get('class')}")
            if pa.get("source") != pb.get("source"):
                problems.append(f"{where}: processed source {pa.get('source')} vs "
                                f"{pb.get('source')}")
            if not _close(pa.get("score"), pb.get("score")):
                problems.append(f"{where}: processed score {pa.get('score')} vs "
                                f"{pb.get('score')}")
    return problems


def compare_predictions(ref: Mapping[str, Any], ours: Mapping[str, Any]) -> dict[str, Any]:
    """Image-by-image comparison of two predictions files (dicts), keyed by filepath."""
    rmap = {p["filepath"]: p for p in ref.get("predictions", [])}
    omap = {p["filepath"]: p for p in ours.get("predictions", [])}
    problems: list[str] = []
    bad: set[str] = set()
    for fp, r in rmap.items():
        o = omap.get(fp)
        if o is None:
            problems.append(f"{fp}: missing from edgenet's predictions")
            bad.add(fp)
            continue
        diff = compare_one(r, o)
        if diff:
            bad.add(fp)
            problems += diff
    for fp in omap.keys() - rmap.keys():
        problems.append(f"{fp}: only in edgenet's predictions")
        bad.add(fp)
    return {"images": len(rmap), "mismatched_images": len(bad), "problems": problems,
            "detections": sum(len(p.get("detections") or []) for p in rmap.values())}


def _detection_rows(dets: Sequence[Mapping[str, Any]]) -> Any:
    """Detections as the converter's fidelity rows [x1, y1, x2, y2, conf, category]."""
    import numpy as np

    return np.array([[d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2],
                      d["bbox"][1] + d["bbox"][3], d["conf"], int(d["category"])]
                     for d in dets], dtype=np.float64).reshape(-1, 6)


def _top1(det: Mapping[str, Any]) -> Any:
    classes = (det.get("raw_classifications") or {}).get("classes") or []
    return classes[0] if classes else None


def _processed(det: Mapping[str, Any]) -> Any:
    return (det.get("processed_classification") or {}).get("class")


def prediction_agreement(base: Mapping[str, Any], test: Mapping[str, Any],
                         min_conf: float = 0.1, iou: float = 0.5) -> dict[str, Any]:
    """How close TEST's predictions file is to BASE's (e.g. bf16 to fp32) on the same images,
    in the terms of the converter's fidelity report: detections at conf >= MIN_CONF (those
    the classifier and ensemble use) matched one to one (same category, IoU > IOU, greedily
    in BASE's confidence order): recall and precision; over the matched pairs that both
    classified: top-1 class agreement and the same `processed_classification` class (the
    ensemble's decision for that detection)."""
    from converters.fidelity import match_detections

    bmap = {p["filepath"]: p for p in base.get("predictions", [])}
    tmap = {p["filepath"]: p for p in test.get("predictions", [])}
    n_base = n_test = matched = classified = same_top1 = same_processed = images = 0
    for fp, b in bmap.items():
        t = tmap.get(fp)
        if t is None:
            continue
        images += 1
        bd = [d for d in b.get("detections") or [] if d.get("conf", 0) >= min_conf]
        td = [d for d in t.get("detections") or [] if d.get("conf", 0) >= min_conf]
        n_base, n_test = n_base + len(bd), n_test + len(td)
        # The converter's matching (greedy by BASE's confidence, same category, IoU > IOU).
        for i, j, _ in match_detections(_detection_rows(bd), _detection_rows(td), iou):
            matched += 1
            d, e = bd[i], td[j]
            if _top1(d) is not None and _top1(e) is not None:
                classified += 1
                same_top1 += _top1(d) == _top1(e)
                same_processed += _processed(d) == _processed(e)
    out: dict[str, Any] = {"images": images, "min_conf": min_conf, "base_detections": n_base,
           "test_detections": n_test, "matched": matched,
           "recall": matched / n_base if n_base else 1.0,
           "precision": matched / n_test if n_test else 1.0,
           "classified_pairs": classified,
           "top1_agreement": same_top1 / classified if classified else 1.0,
           "processed_agreement": same_processed / classified if classified else 1.0}
    out["text"] = (f"det R/P {out['recall']:.2f}/{out['precision']:.2f}, top1 "
                   f"{out['top1_agreement']:.2f} (vs the fp32 row's predictions)")
    return out
