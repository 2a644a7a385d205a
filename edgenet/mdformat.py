"""SpeciesNet predictions -> MegaDetector batch output format 1.6 (what Timelapse reads).

Format: https://lila.science/megadetector-output-format. Mapping decisions:

* `info`: format_version "1.6", detector (the pack's detector file name when it is an
  MegaDetector name like "md_v5a.0.0.onnx", else "md_v5a.0.0.pt", so tools such as
  Timelapse pick MDv5 thresholds), detection/classification completion
  time, classifier ("speciesnet <model_version>"), detector_metadata with MDv5a's
  recommended thresholds.
* `detection_categories`: {"1": "animal", "2": "person", "3": "vehicle"} (MegaDetector calls
  SpeciesNet's "human" "person").
* Each SpeciesNet detection becomes `{"category", "conf", "bbox"}` (same normalised
  [xmin, ymin, width, height] box). A detection with a `processed_classification` gets
  `classifications: [[id, score]]` (the ensemble's decision); one with only
  `raw_classifications` (classifier-only output) gets its top classes, score-descending.
* A whole-image classifier's category "0" pseudo-detection is not a box: its classification
  is attached to the image's most confident detection when there is one and dropped
  otherwise (MegaDetector reserves category "0").
* `classification_categories`: ids "0", "1", ... over the distinct SpeciesNet labels in
  sorted order (stable across runs over the same labels); the name is the label's common
  name (last field), or its most specific non-empty taxon; `classification_category_
  descriptions` holds the full SpeciesNet label string.
* An image with `failures` and no detections gets `"failure": "<FAILURES>"` and
  `"detections": null`; otherwise `"failure"` is omitted.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any

from edgenet.predictions import load_predictions_file, write_text_atomic

MD_FORMAT_VERSION = "1.6"
DETECTION_CATEGORIES = {"1": "animal", "2": "person", "3": "vehicle"}
DEFAULT_DETECTOR = "md_v5a.0.0.pt"
DETECTOR_METADATA = {
    "megadetector_version": "v5a.0.0",
    "image_size": 1280,
    "typical_detection_threshold": 0.2,
    "conservative_detection_threshold": 0.05,
}


def label_name(label: str) -> str:
    """Readable name of a SpeciesNet label `uuid;class;order;family;genus;species;common`."""
    parts = [p.strip() for p in label.split(";")]
    if len(parts) >= 7 and parts[6]:
        return parts[6]
    if len(parts) >= 6 and parts[4] and parts[5]:
        return f"{parts[4]} {parts[5]}"
    taxa = [p for p in parts[1:6] if p]
    return taxa[-1] if taxa else (label or "unknown")


def _detection_classifications(det: dict) -> list[tuple[str, float]]:
    processed = det.get("processed_classification")
    if isinstance(processed, dict) and "class" in processed:
        return [(processed["class"], float(processed.get("score", 0.0)))]
    raw = det.get("raw_classifications")
    if isinstance(raw, dict):
        pairs = list(zip(raw.get("classes", []), raw.get("scores", []), strict=False))
        pairs.sort(key=lambda p: p[1], reverse=True)
        return [(c, float(s)) for c, s in pairs]
    return []


def to_md_format(
    predictions_dict: dict,
    *,
    detector: str | None = None,
    completion_time: str | None = None,
) -> dict:
    """Convert a SpeciesNet predictions dict to a MegaDetector format 1.6 dict."""
    predictions = predictions_dict.get("predictions", [])
    labels: set[str] = set()
    versions: set[str] = set()
    for pred in predictions:
        if pred.get("model_version"):
            versions.add(str(pred["model_version"]))
        for det in pred.get("detections") or []:
            labels.update(c for c, _ in _detection_classifications(det))
    label_ids = {label: str(i) for i, label in enumerate(sorted(labels))}

    images = []
    for pred in predictions:
        image: dict[str, Any] = {"file": pred["filepath"]}
        detections = pred.get("detections")
        if detections is None:
            failures = pred.get("failures") or ["UNKNOWN"]
            image["failure"] = ",".join(failures)
            image["detections"] = None
            images.append(image)
            continue
        whole_image_cls: list[tuple[str, float]] = []
        md_dets = []
        for det in detections:
            cls = _detection_classifications(det)
            if det.get("category") == "0":
                whole_image_cls = cls
                continue
            if det.get("category") not in DETECTION_CATEGORIES:
                continue
            md: dict[str, Any] = {
                "category": det["category"],
                "conf": det["conf"],
                "bbox": list(det["bbox"]),
            }
            if cls:
                md["classifications"] = [[label_ids[c], s] for c, s in cls]
            md_dets.append(md)
        if whole_image_cls and md_dets:
            top = max(range(len(md_dets)), key=lambda i: md_dets[i]["conf"])
            md_dets[top].setdefault(
                "classifications", [[label_ids[c], s] for c, s in whole_image_cls]
            )
        image["detections"] = md_dets
        images.append(image)

    when = completion_time or _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    info: dict[str, Any] = {
        "format_version": MD_FORMAT_VERSION,
        "detector": detector if detector and detector.startswith("md_") else DEFAULT_DETECTOR,
        "detection_completion_time": when,
        "detector_metadata": dict(DETECTOR_METADATA),
    }
    if label_ids or versions:
        info["classifier"] = "speciesnet " + ",".join(sorted(versions)) if versions else (
            "speciesnet"
        )
        info["classification_completion_time"] = when
    out: dict[str, Any] = {
        "info": info,
        "detection_categories": dict(DETECTION_CATEGORIES),
    }
    if label_ids:
        out["classification_categories"] = {i: label_name(lab) for lab, i in label_ids.items()}
        out["classification_category_descriptions"] = {i: lab for lab, i in label_ids.items()}
    out["images"] = images
    return out


def save_md(md_dict: dict, output: str | os.PathLike) -> None:
    """Write an MD-format dict atomically (floats rounded to 4 decimals, indent 1)."""
    from edgenet.predictions import dumps_predictions

    write_text_atomic(dumps_predictions(md_dict), output)


def convert_file(
    input_json: str | os.PathLike, output_json: str | os.PathLike, detector: str | None = None
) -> dict:
    """`edgenet to-md IN OUT`: read a predictions file, write the MD-format file."""
    data = load_predictions_file(Path(input_json), what="predictions file", flag="IN")
    md = to_md_format(data, detector=detector)
    save_md(md, output_json)
    return md
